//! The address guard: webhook URLs come from customers, so a URL must not
//! reach the service's own network (its database, a cloud metadata
//! endpoint, a neighbour's admin page).
//!
//! Every address is checked after DNS resolution, and the HTTP client
//! connects only to the addresses the check let through: the client's
//! resolver is this guard, so a name that resolves differently between a
//! check and a connect (DNS rebinding) cannot slip past. URLs with an IP
//! literal, which the client does not resolve, are checked before the
//! request is made. Proxies are off, and redirects are not followed.

use async_trait::async_trait;
use ipnet::IpNet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Turns a host name into addresses: the system's resolver by default.
/// Replace it to resolve through your own DNS, or in a test.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `host`.
    ///
    /// # Errors
    ///
    /// Any I/O error; the delivery attempt fails with it and is retried.
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The system's resolver, through tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, 0))
            .await?
            .map(|addr| addr.ip())
            .collect())
    }
}

/// Ranges no webhook may reach unless allowed: the IANA special-purpose
/// registries for IPv4 and IPv6 (private, loopback, link-local, shared
/// address space, documentation, benchmarking, multicast, reserved).
const REFUSED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    // IPv4-compatible addresses (deprecated): refused whole.
    "::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) address: IpAddr,
    pub(crate) range: IpNet,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is in {}, a private or reserved range",
            self.address, self.range
        )
    }
}

/// Decides which addresses a webhook may reach.
#[derive(Clone)]
pub(crate) struct Guard {
    refused: Arc<[IpNet]>,
    allowed: Arc<[IpNet]>,
    /// Off: every address is allowed (only for a network you trust).
    on: bool,
    resolver: Arc<dyn Resolver>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("on", &self.on)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Guard {
    pub(crate) fn new(on: bool, allowed: Vec<IpNet>, resolver: Arc<dyn Resolver>) -> Self {
        Guard {
            refused: REFUSED
                .iter()
                .map(|range| range.parse().expect("the guard's ranges parse"))
                .collect(),
            allowed: allowed.into(),
            on,
            resolver,
        }
    }

    /// The same address as IPv4 when it is an IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`) or a NAT64 one (`64:ff9b::10.0.0.1`), which
    /// reach the IPv4 address they carry.
    pub(crate) fn canonical(address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return IpAddr::V4(v4);
                }
                let segments = v6.segments();
                if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                    let [a, b] = segments[6].to_be_bytes();
                    let [c, d] = segments[7].to_be_bytes();
                    return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
                }
                IpAddr::V6(v6)
            }
            v4 => v4,
        }
    }

    /// Whether a webhook may reach `address`.
    pub(crate) fn check(&self, address: IpAddr) -> Result<(), Refused> {
        if !self.on {
            return Ok(());
        }
        let address = Self::canonical(address);
        if self.allowed.iter().any(|net| net.contains(&address)) {
            return Ok(());
        }
        match self.refused.iter().find(|net| net.contains(&address)) {
            Some(range) => Err(Refused {
                address,
                range: *range,
            }),
            None => Ok(()),
        }
    }

    /// Resolves `host` and keeps the addresses a webhook may reach; none
    /// left is an error naming the first refusal.
    async fn allowed_addresses(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let addresses = self.resolver.resolve(host).await?;
        let mut refusal = None;
        let kept: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|&address| match self.check(address) {
                Ok(()) => true,
                Err(refused) => {
                    refusal.get_or_insert(refused);
                    false
                }
            })
            .collect();
        match (kept.is_empty(), refusal) {
            (false, _) => Ok(kept),
            (true, Some(refused)) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                GuardRefused {
                    host: host.to_owned(),
                    refused,
                },
            )),
            (true, None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolves to no address"),
            )),
        }
    }
}

/// A host whose every address the guard refused.
#[derive(Debug)]
pub(crate) struct GuardRefused {
    pub(crate) host: String,
    pub(crate) refused: Refused,
}

impl fmt::Display for GuardRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused to connect: {} resolves to {}; allow the range with `WebhooksBuilder::allow` if it is meant",
            self.host, self.refused
        )
    }
}

impl std::error::Error for GuardRefused {}

/// The guard as the HTTP client's resolver, so the client connects only to
/// addresses it let through.
impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let addresses = guard.allowed_addresses(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(
                addresses
                    .into_iter()
                    .map(|address| SocketAddr::new(address, 0)),
            );
            Ok(addrs)
        })
    }
}

/// An IP literal in a URL's host, which the client connects to without
/// resolving it.
pub(crate) fn literal(host: &url::Host<&str>) -> Option<IpAddr> {
    match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(*v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(*v6)),
        url::Host::Domain(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn guard(allowed: &[&str]) -> Guard {
        Guard::new(
            true,
            allowed.iter().map(|a| a.parse().unwrap()).collect(),
            Arc::new(SystemResolver),
        )
    }

    #[test]
    fn private_and_reserved_addresses_are_refused() {
        let guard = guard(&[]);
        for refused in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "127.8.9.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
            "2002:a00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
        ] {
            let address: IpAddr = refused.parse().unwrap();
            assert!(guard.check(address).is_err(), "{refused} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let guard = guard(&[]);
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "93.184.215.14",
            "::ffff:1.1.1.1",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
        ] {
            let address: IpAddr = public.parse().unwrap();
            assert_eq!(guard.check(address), Ok(()), "{public} must pass");
        }
    }

    #[test]
    fn mapped_addresses_are_checked_as_the_ipv4_they_carry() {
        let refused = guard(&[]).check("::ffff:169.254.169.254".parse().unwrap());
        assert_eq!(
            refused.unwrap_err().address,
            IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))
        );
        assert_eq!(
            Guard::canonical(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
    }

    #[test]
    fn the_allowlist_lets_a_range_through_and_nothing_else() {
        let guard = guard(&["127.0.0.1/32"]);
        assert_eq!(guard.check("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(guard.check("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert!(guard.check("127.0.0.2".parse().unwrap()).is_err());
        assert!(guard.check("10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn an_off_guard_allows_everything() {
        let guard = Guard::new(false, Vec::new(), Arc::new(SystemResolver));
        assert_eq!(guard.check("10.0.0.1".parse().unwrap()), Ok(()));
    }
}
