//! The server-side request forgery guard of webhook deliveries. A customer names the URL; the
//! gateway must not become their way into its own network (the cloud metadata service at
//! 169.254.169.254, an admin port on localhost, a database on 10.x).
//!
//! - Only `https` URLs, unless `WEBHOOK_ALLOW_HTTP` or `WEBHOOK_ALLOW_PRIVATE` is set.
//! - Every address the host resolves to is checked, and the host is refused if any one is
//!   loopback, private, shared (CGNAT), link-local, multicast, broadcast, unspecified,
//!   reserved, or an IPv6 form embedding one of these (mapped, compatible, 6to4, NAT64).
//! - The check runs at creation and at every delivery, and the delivery connects to the
//!   addresses that were checked: [`GuardedResolver`] is the HTTP client's only resolver, so
//!   there is no second lookup for a rebinding DNS server to answer differently.
//! - `WEBHOOK_ALLOW_PRIVATE=true` lifts the address rule (tests, on-premises receivers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

use crate::domain::InvalidInput;

/// Longest wait for a host's addresses.
pub const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What endpoints may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    /// Private, loopback and the other internal addresses are allowed (`WEBHOOK_ALLOW_PRIVATE`).
    pub allow_private: bool,
    /// `http` is allowed besides `https` (`WEBHOOK_ALLOW_HTTP`, or with `allow_private`).
    pub allow_http: bool,
}

/// Why an address is not a public one, if it is not.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast()
        || a >= 240
        || (a, b, c) == (192, 0, 0)
        || (a, b, c) == (192, 0, 2)
        || (a, b) == (198, 18)
        || (a, b) == (198, 19)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
    {
        Some("reserved")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Forms that embed an IPv4 address: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d),
    // NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:AABB:CCDD::).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    if segments[..6] == [0; 6] {
        let v4 = Ipv4Addr::from(((segments[6] as u32) << 16) | segments[7] as u32);
        return v4_kind(v4).or(Some("IPv4-compatible"));
    }
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0; 4] {
        let v4 = Ipv4Addr::from(((segments[6] as u32) << 16) | segments[7] as u32);
        return v4_kind(v4);
    }
    if segments[0] == 0x2002 {
        let v4 = Ipv4Addr::from(((segments[1] as u32) << 16) | segments[2] as u32);
        return v4_kind(v4);
    }
    if segments[0] & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        Some("reserved")
    } else {
        None
    }
}

/// A URL refused as an endpoint, with the reason.
fn refused(reason: impl Into<String>) -> InvalidInput {
    InvalidInput::new("url", reason)
}

impl TargetPolicy {
    /// Checks `raw` as an endpoint URL (scheme, host, and an IP literal's address); a host
    /// name's addresses are checked by [`TargetPolicy::resolve`].
    pub fn check_url(&self, raw: &str) -> Result<Url, InvalidInput> {
        let url = Url::parse(raw).map_err(|err| refused(format!("is not a URL ({err})")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http || self.allow_private => {}
            "http" => return Err(refused("must be https")),
            _ => return Err(refused("must be an https URL")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refused("must not carry credentials"));
        }
        let host = url.host().ok_or_else(|| refused("has no host"))?;
        let literal = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = literal {
            self.check_address(ip)?;
        }
        Ok(url)
    }

    fn check_address(&self, ip: IpAddr) -> Result<(), InvalidInput> {
        match internal_kind(ip) {
            Some(kind) if !self.allow_private => Err(refused(format!(
                "points at a {kind} address ({ip}); only public addresses are allowed"
            ))),
            _ => Ok(()),
        }
    }

    /// Resolves `host` (within [`RESOLVE_TIMEOUT`]) and checks every address; the addresses to
    /// connect to.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, InvalidInput> {
        let addresses: Vec<SocketAddr> =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| refused("has a host that did not resolve in time"))?
                .map_err(|err| refused(format!("has a host that does not resolve ({err})")))?
                .collect();
        if addresses.is_empty() {
            return Err(refused("has a host without addresses"));
        }
        for address in &addresses {
            self.check_address(address.ip())?;
        }
        Ok(addresses)
    }

    /// Checks a URL completely: [`TargetPolicy::check_url`], then its host's addresses (not
    /// when private addresses are allowed: then every address is, and a host that does not
    /// resolve yet fails at delivery).
    pub async fn check(&self, raw: &str) -> Result<Url, InvalidInput> {
        let url = self.check_url(raw)?;
        if self.allow_private {
            return Ok(url);
        }
        if let Some(url::Host::Domain(name)) = url.host() {
            self.resolve(name, url.port_or_known_default().unwrap_or(443))
                .await?;
        }
        Ok(url)
    }
}

/// The webhook client's resolver: every lookup is checked by the policy, and the client
/// connects to exactly the addresses checked.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: TargetPolicy,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: TargetPolicy) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { policy })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        Box::pin(async move {
            // The port is the URL's: the client sets it on the addresses returned.
            let addresses = policy.resolve(name.as_str(), 0).await.map_err(
                |refusal| -> Box<dyn std::error::Error + Send + Sync> {
                    refusal.to_string().into()
                },
            )?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy {
        allow_private: false,
        allow_http: false,
    };

    #[test]
    fn internal_addresses_of_every_kind_are_named() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(internal_kind(ip).is_some(), "{internal} is internal");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(internal_kind(ip), None, "{public} is public");
        }
    }

    #[test]
    fn urls_are_https_without_credentials_and_not_internal_literals() {
        assert!(STRICT.check_url("https://hooks.example.com/wa").is_ok());
        for bad in [
            "http://hooks.example.com/wa",
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "https://127.0.0.1/",
            "https://10.0.0.7:8443/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "not a url",
        ] {
            assert_eq!(STRICT.check_url(bad).unwrap_err().field, "url", "{bad}");
        }
        let open = TargetPolicy {
            allow_private: true,
            allow_http: false,
        };
        assert!(open.check_url("http://127.0.0.1:9000/hook").is_ok());
        let http_only = TargetPolicy {
            allow_private: false,
            allow_http: true,
        };
        assert!(http_only.check_url("http://hooks.example.com/").is_ok());
        assert!(http_only.check_url("http://127.0.0.1/").is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_an_internal_address_is_refused() {
        let refusal = STRICT
            .check("https://localhost:9000/hook")
            .await
            .unwrap_err();
        assert!(refusal.problem.contains("loopback"), "{refusal}");
        let open = TargetPolicy {
            allow_private: true,
            allow_http: true,
        };
        assert!(open.check("http://localhost:9000/hook").await.is_ok());
        let resolver = GuardedResolver::new(STRICT);
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(
            reqwest::dns::Resolve::resolve(&*resolver, name)
                .await
                .is_err()
        );
    }
}
