//! FULLNAT forwarding (DPVS's `--fullnat`): both addresses and both ports
//! are translated in both directions.
//!
//! A client's packet leaves the LB as *local address:port → backend:port*;
//! the backend answers the local address, which is one of the LB host's
//! own, so the reply comes back to the LB whatever the backend's routing
//! (no default route through the LB, as NAT needs, and no VIP on the
//! backend, as DR needs). The backend sees the local address as its
//! client.
//!
//! In Sluice a FULLNAT flow is a NAT flow whose client is always
//! masqueraded, with the service's own source addresses: the flow record
//! holds the original tuple (client → VIP) and the reply tuple (backend →
//! local address:port), and every packet of either direction is rewritten
//! into the reverse of the other direction's tuple by [`super::nat::rewrite`]
//! (RFC 1624 incremental checksums). ICMP errors about a FULLNAT flow are
//! translated back like NAT's (`pipeline::follow_icmp_error`), because the
//! flow record is the same shape. So this module only decides what sets a
//! FULLNAT flow apart: which addresses it takes ([`sources`]) and which
//! part of the port space ([`crate::snat::Share`], one slice per worker as
//! DPVS's `sa_pool` per lcore). The allocation itself is the masquerade
//! allocator's ([`crate::snat::allocate`]): one prober, one set of
//! bounds, one table as the arbiter between workers.
//!
//! Steering: the local addresses are put in the steering program's
//! `snat_addrs` set, so rule (c) of `bpf/steer.c` sends the backend's
//! replies (to a local address, on a port in the SNAT ranges, from a
//! FULLNAT backend) to the sockets, while the host's own connections from
//! that address (ephemeral ports, outside the SNAT ranges) stay with the
//! kernel.

use crate::service::ServiceSpec;
use crate::snat::SnatAddrs;
use crate::types::Addr;

/// The addresses a FULLNAT flow of `spec` towards `backend` is translated
/// to: the service's local addresses of the backend's family, else the
/// run-wide `--snat-address`es of that family, else `route_src` (the
/// route's preferred source towards the backend). Never empty.
#[inline]
pub fn sources<'a>(
    spec: &'a ServiceSpec,
    run_wide: &'a SnatAddrs,
    backend: &Addr,
    route_src: &'a Addr,
) -> &'a [Addr] {
    let own = &spec.local_addrs[..];
    if !own.is_empty() && own[0].is_v4() == backend.is_v4() {
        return own;
    }
    let addrs = run_wide.for_backend(backend);
    if addrs.is_empty() {
        std::slice::from_ref(route_src)
    } else {
        addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ForwardMethod;

    #[test]
    fn local_addresses_first_then_run_wide_then_route() {
        let backend = Addr::from_v4([198, 18, 1, 10]);
        let route = Addr::from_v4([198, 18, 1, 1]);
        let la = vec![
            Addr::from_v4([198, 18, 0, 5]),
            Addr::from_v4([198, 18, 0, 6]),
        ];
        let mut spec = ServiceSpec {
            forward: ForwardMethod::FullNat,
            local_addrs: la.clone(),
            ..Default::default()
        };
        let run = SnatAddrs::new(&[Addr::from_v4([198, 18, 0, 9])]);
        assert_eq!(sources(&spec, &run, &backend, &route), &la[..]);
        spec.local_addrs.clear();
        assert_eq!(
            sources(&spec, &run, &backend, &route),
            &[Addr::from_v4([198, 18, 0, 9])]
        );
        assert_eq!(
            sources(&spec, &SnatAddrs::default(), &backend, &route),
            &[route]
        );
        // A v6 backend never gets v4 local addresses.
        spec.local_addrs = la;
        let b6 = Addr::from_v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]);
        let r6 = Addr::from_v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(sources(&spec, &run, &b6, &r6), &[r6]);
    }
}
