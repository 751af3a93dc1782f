//! The address a fake server puts in the URLs it gives out.
//!
//! Bound on `0.0.0.0:7000` inside a compose network, the fake is reached as `sim:7000`: the
//! gateway URL of `GET /gateway`, the resume URL of READY and the attachment URLs must name
//! `sim`, or an instance in another container would be sent to an address it cannot reach.
//! Bound on loopback (every scenario run), the bound address is the one to give out.

use std::fmt;
use std::net::SocketAddr;

/// `host:port` as given out in URLs: the advertised host (with the bound port unless it names
/// its own) or, without one, the bound address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertised {
    bound: SocketAddr,
    public: Option<String>,
}

impl Advertised {
    /// `advertise` is `host` or `host:port`; `None` or empty gives out `bound`.
    pub fn new(bound: SocketAddr, advertise: Option<&str>) -> Self {
        let public = advertise.map(str::trim).filter(|a| !a.is_empty()).map(|a| {
            // `host:port`, but not a bare IPv6 address (`::1`), which has colons of its own.
            let has_port = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok());
            if has_port {
                a.to_string()
            } else {
                format!("{a}:{}", bound.port())
            }
        });
        Self { bound, public }
    }

    /// The address the server listens on.
    pub fn bound(&self) -> SocketAddr {
        self.bound
    }
}

impl fmt::Display for Advertised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.public {
            Some(p) => f.write_str(p),
            None => write!(f, "{}", self.bound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_out_the_advertised_host_with_the_bound_port() {
        let bound: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert_eq!(Advertised::new(bound, Some("sim")).to_string(), "sim:7000");
        assert_eq!(Advertised::new(bound, Some("sim:80")).to_string(), "sim:80");
        assert_eq!(Advertised::new(bound, None).to_string(), "0.0.0.0:7000");
        assert_eq!(
            Advertised::new(bound, Some(" ")).to_string(),
            "0.0.0.0:7000"
        );
        assert_eq!(
            Advertised::new(bound, Some("[::1]")).to_string(),
            "[::1]:7000"
        );
        assert_eq!(Advertised::new(bound, Some("sim")).bound(), bound);
    }
}
