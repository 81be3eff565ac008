//! A small FAT volume with a few files in its root, written by the `fatfs` crate: the
//! cloud-init NoCloud seed (label `cidata`), made without `mkfs.vfat` or `genisoimage`.

use std::{
    fs::OpenOptions,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// The smallest volume written: FAT12 with room for the files' clusters and directory.
const MIN_SIZE: u64 = 1 << 20;

/// Writes a new FAT volume at `path` (mode 0600; an existing file is an error) labelled
/// `label` (at most 11 bytes), with `files` in its root directory under their long names.
pub fn write_volume(path: &Path, label: &str, files: &[(&str, &[u8])]) -> std::io::Result<()> {
    let mut volume_label = [b' '; 11];
    let l = label.as_bytes();
    if l.len() > volume_label.len() {
        return Err(std::io::Error::other(format!(
            "FAT label '{label}' is longer than 11 bytes"
        )));
    }
    volume_label[..l.len()].copy_from_slice(l);
    let data: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    // Room for every file's last partial cluster, the FATs and the directory, in whole MiB.
    let size = (MIN_SIZE + data * 2).div_ceil(MIN_SIZE) * MIN_SIZE;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.set_len(size)?;
    fatfs::format_volume(
        &mut file,
        fatfs::FormatVolumeOptions::new().volume_label(volume_label),
    )?;
    file.seek(SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
    for (name, bytes) in files {
        fs.root_dir().create_file(name)?.write_all(bytes)?;
    }
    fs.unmount()?;
    file.sync_all()
}

/// A file's name and bytes.
pub type NamedFile = (String, Vec<u8>);

/// The label and the root directory's files of the FAT volume at `path`, each name with its
/// bytes: what a guest mounting it would find.
pub fn read_volume(path: &Path) -> std::io::Result<(String, Vec<NamedFile>)> {
    let file = std::fs::File::open(path)?;
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new())?;
    let label = fs.volume_label();
    let mut files = Vec::new();
    for entry in fs.root_dir().iter() {
        let entry = entry?;
        if entry.is_file() {
            let mut bytes = Vec::new();
            entry.to_file().read_to_end(&mut bytes)?;
            files.push((entry.file_name(), bytes));
        }
    }
    Ok((label, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_written_read_back_with_their_long_names_and_the_label() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed.img");
        let big = vec![b'x'; 3 << 20];
        let files: [(&str, &[u8]); 3] = [
            ("user-data", b"#cloud-config\n"),
            ("meta-data", b"instance-id: a\n"),
            ("network-config", &big),
        ];
        write_volume(&p, "cidata", &files).unwrap();
        let (label, got) = read_volume(&p).unwrap();
        assert_eq!(label, "cidata");
        let want: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_vec()))
            .collect();
        assert_eq!(got, want);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never over an existing file.
        assert!(write_volume(&p, "cidata", &files).is_err());
        assert!(write_volume(&dir.path().join("b"), "a-very-long-label", &[]).is_err());
    }
}
