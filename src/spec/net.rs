//! The guest's network: `--net none` (the default: no network card at all) or
//! `--net user[,hostfwd=RULE]...`, a virtio network card on QEMU's user-mode network (slirp:
//! the guest reaches out through the host, no privileges needed), with host ports forwarded
//! into the guest. A RULE is QEMU's: `[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`,
//! e.g. `tcp::2222-:22` or `tcp:127.0.0.1:8080-:80`. The same text goes in a spec file:
//! `net = "user,hostfwd=tcp::2222-:22"`.

use std::{fmt, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::spec::error::SpecError;

/// The guest's network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Net {
    /// No network card.
    #[default]
    None,
    /// A network card on QEMU's user-mode network.
    User(UserNet),
}

/// QEMU's user-mode network (`-netdev user`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNet {
    /// Host ports forwarded into the guest.
    #[serde(default)]
    pub hostfwd: Vec<HostFwd>,
}

/// A forwarding protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One host port forwarded to the guest (QEMU's `hostfwd=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFwd {
    /// TCP or UDP.
    pub proto: Proto,
    /// The host address to listen on; none: every address.
    pub host_addr: Option<Ipv4Addr>,
    /// The host port.
    pub host_port: u16,
    /// The guest address; none: the guest's first DHCP address.
    pub guest_addr: Option<Ipv4Addr>,
    /// The guest port.
    pub guest_port: u16,
}

impl fmt::Display for HostFwd {
    /// QEMU's spelling, e.g. `tcp::2222-:22`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = |a: &Option<Ipv4Addr>| a.map(|a| a.to_string()).unwrap_or_default();
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(
            f,
            "{proto}:{}:{}-{}:{}",
            addr(&self.host_addr),
            self.host_port,
            addr(&self.guest_addr),
            self.guest_port
        )
    }
}

const FORM: &str = "write [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT, e.g. tcp::2222-:22";

impl HostFwd {
    /// Parses a rule; errors name `field` and the part that is wrong.
    pub fn parse(field: &str, rule: &str) -> Result<HostFwd, SpecError> {
        let invalid = |expected: String| SpecError::Invalid {
            field: field.into(),
            value: rule.into(),
            expected,
        };
        let Some((host, guest)) = rule.split_once('-') else {
            return Err(invalid(format!("no '-' between host and guest; {FORM}")));
        };
        let host: Vec<&str> = host.split(':').collect();
        let guest: Vec<&str> = guest.split(':').collect();
        let ([proto, host_addr, host_port], [guest_addr, guest_port]) =
            (host.as_slice(), guest.as_slice())
        else {
            return Err(invalid(FORM.into()));
        };
        let proto = match *proto {
            "" | "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            p => return Err(invalid(format!("protocol '{p}': valid: tcp, udp"))),
        };
        let addr = |what: &str, a: &str| {
            if a.is_empty() {
                return Ok(None);
            }
            a.parse::<Ipv4Addr>()
                .map(Some)
                .map_err(|_| invalid(format!("{what} address '{a}' is not an IPv4 address")))
        };
        let port = |what: &str, p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid(format!("{what} port '{p}' is not in 1..65535"))),
        };
        Ok(HostFwd {
            proto,
            host_addr: addr("host", host_addr)?,
            host_port: port("host", host_port)?,
            guest_addr: addr("guest", guest_addr)?,
            guest_port: port("guest", guest_port)?,
        })
    }
}

impl Net {
    /// Parses `none` or `user[,hostfwd=RULE]...`, as given to `field` (`--net`, `net`).
    pub fn parse(field: &str, s: &str) -> Result<Net, SpecError> {
        let invalid = |expected: String| SpecError::Invalid {
            field: field.into(),
            value: s.into(),
            expected,
        };
        let mut parts = s.split(',');
        let mode = parts.next().unwrap_or_default().trim();
        let options: Vec<&str> = parts.collect();
        match mode {
            "none" if options.is_empty() => Ok(Net::None),
            "none" => Err(invalid("none takes no options".into())),
            "user" => {
                let mut user = UserNet::default();
                for o in options {
                    match o.split_once('=') {
                        Some(("hostfwd", rule)) => {
                            let fwd = HostFwd::parse(&format!("{field} hostfwd"), rule)?;
                            let clash = user.hostfwd.iter().find(|h| {
                                h.proto == fwd.proto
                                    && h.host_port == fwd.host_port
                                    && (h.host_addr == fwd.host_addr
                                        || h.host_addr.is_none()
                                        || fwd.host_addr.is_none())
                            });
                            if let Some(h) = clash {
                                return Err(invalid(format!(
                                    "hostfwd {fwd} and {h} take the same host port"
                                )));
                            }
                            user.hostfwd.push(fwd);
                        }
                        _ => {
                            return Err(invalid(format!(
                                "unknown option '{o}'; valid: hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT (repeatable)"
                            )));
                        }
                    }
                }
                Ok(Net::User(user))
            }
            m => Err(invalid(format!(
                "unknown network '{m}'; valid: none, user[,hostfwd=...]"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Result<Net, String> {
        Net::parse("--net", s).map_err(|e| e.to_string())
    }

    #[test]
    fn user_networks_with_forwarded_ports() {
        assert_eq!(net("none").unwrap(), Net::None);
        assert_eq!(net("user").unwrap(), Net::User(UserNet::default()));
        let Net::User(u) =
            net("user,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53").unwrap()
        else {
            panic!("not user")
        };
        let rules: Vec<String> = u.hostfwd.iter().map(ToString::to_string).collect();
        assert_eq!(rules, ["tcp::2222-:22", "udp:127.0.0.1:5353-10.0.2.15:53"]);
        // QEMU's empty protocol is TCP.
        let Net::User(u) = net("user,hostfwd=::8080-:80").unwrap() else {
            panic!()
        };
        assert_eq!(u.hostfwd[0].to_string(), "tcp::8080-:80");
    }

    #[test]
    fn bad_rules_name_the_field_and_the_part() {
        assert_eq!(
            net("user,hostfwd=tcp::99999-:22").unwrap_err(),
            "invalid --net hostfwd 'tcp::99999-:22': host port '99999' is not in 1..65535"
        );
        assert_eq!(
            net("user,hostfwd=tcp::2222-:0").unwrap_err(),
            "invalid --net hostfwd 'tcp::2222-:0': guest port '0' is not in 1..65535"
        );
        assert_eq!(
            net("user,hostfwd=icmp::1-:2").unwrap_err(),
            "invalid --net hostfwd 'icmp::1-:2': protocol 'icmp': valid: tcp, udp"
        );
        assert!(
            net("user,hostfwd=tcp:localhost:1-:2")
                .unwrap_err()
                .contains("host address 'localhost' is not an IPv4 address")
        );
        assert!(net("user,hostfwd=2222:22").unwrap_err().contains("no '-'"));
        assert!(net("user,hostfwd=tcp:2222-22").unwrap_err().contains(FORM));
        assert_eq!(
            net("tap").unwrap_err(),
            "invalid --net 'tap': unknown network 'tap'; valid: none, user[,hostfwd=...]"
        );
        assert!(
            net("user,model=e1000")
                .unwrap_err()
                .contains("unknown option 'model=e1000'")
        );
        assert!(
            net("none,hostfwd=tcp::1-:2")
                .unwrap_err()
                .contains("none takes no options")
        );
        assert!(
            net("user,hostfwd=tcp::2222-:22,hostfwd=tcp:127.0.0.1:2222-:23")
                .unwrap_err()
                .contains("take the same host port")
        );
        // The same port for TCP and UDP is two rules.
        assert!(net("user,hostfwd=tcp::53-:53,hostfwd=udp::53-:53").is_ok());
    }
}
