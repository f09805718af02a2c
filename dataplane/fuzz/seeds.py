#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (corpus/<target>/seed-*).

Run from dataplane/fuzz: python3 seeds.py. The frames use the fixture
addresses of fuzz_targets/pipeline.rs (198.18.0.0/15, 2001:db8::/32)."""
import os, struct

def csum(data):
    if len(data) % 2:
        data += b'\0'
    s = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while s > 0xffff:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def eth(dst, src, etype, payload):
    return bytes(dst) + bytes(src) + struct.pack('!H', etype) + payload

def ipv4(src, dst, proto, l4, ttl=64):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(l4), 1, 0x4000, ttl, proto, 0,
                    bytes(src), bytes(dst))
    h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    return h + l4

def ipv6(src, dst, nh, l4):
    return struct.pack('!IHBB', 6 << 28, len(l4), nh, 64) + bytes(src) + bytes(dst) + l4

def tcp(sport, dport, flags, seq=1000, ack=0, payload=b''):
    return struct.pack('!HHIIBBHHH', sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload

def udp(sport, dport, payload):
    return struct.pack('!HHHH', sport, dport, 8 + len(payload), 0) + payload

def fix_l4(src, dst, proto, seg, off):
    if len(src) == 4:
        pseudo = bytes(src) + bytes(dst) + struct.pack('!BBH', 0, proto, len(seg))
    else:
        pseudo = bytes(src) + bytes(dst) + struct.pack('!IxxxB', len(seg), proto)
    c = csum(pseudo + seg[:off] + b'\0\0' + seg[off + 2:])
    return seg[:off] + struct.pack('!H', c) + seg[off + 2:]

CLIENT, VIP, B1, B2 = [198, 18, 0, 2], [198, 18, 0, 100], [198, 18, 1, 11], [198, 18, 1, 12]
CLIENT6 = [0x20, 1, 0xd, 0xb8] + [0] * 11 + [2]
VIP6 = [0x20, 1, 0xd, 0xb8, 1] + [0] * 10 + [0x10]
CMAC, FMAC, BMAC = [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 1, 1]
SYN, ACK, FIN, RST, PSH = 2, 16, 1, 4, 8

def v4tcp(src, dst, sp, dp, flags, mac_src=CMAC, mac_dst=FMAC, **kw):
    return eth(mac_dst, mac_src, 0x0800, ipv4(src, dst, 6, fix_l4(src, dst, 6, tcp(sp, dp, flags, **kw), 16)))

def v4udp(src, dst, sp, dp, payload):
    return eth(FMAC, CMAC, 0x0800, ipv4(src, dst, 17, fix_l4(src, dst, 17, udp(sp, dp, payload), 6)))

def v6tcp(src, dst, sp, dp, flags):
    return eth(FMAC, CMAC, 0x86dd, ipv6(src, dst, 6, fix_l4(src, dst, 6, tcp(sp, dp, flags), 16)))

def sctp_init(src, dst, sp, dp):
    # common header (checksum left 0: the core does not check CRC32c) + INIT chunk
    chunk = struct.pack('!BBHIIHHI', 1, 0, 20, 0x1234, 65535, 1, 1, 77)
    return eth(FMAC, CMAC, 0x0800, ipv4(src, dst, 132, struct.pack('!HHII', sp, dp, 0, 0) + chunk))

def icmp_frag_needed(router, to, quoted):
    body = struct.pack('!BBHHH', 3, 4, 0, 0, 1400) + quoted[:28]
    body = body[:2] + struct.pack('!H', csum(body)) + body[4:]
    return eth(FMAC, CMAC, 0x0800, ipv4(router, to, 1, body))

def record(port, frame):
    return bytes([port]) + struct.pack('!H', len(frame)) + frame

syn = v4tcp(CLIENT, VIP, 40000, 80, SYN)
seeds = {
    'pipeline': {
        'tcp-handshake': record(0, syn)
            + record(1, v4tcp(B1, CLIENT, 8080, 40000, SYN | ACK, mac_src=[2, 0, 0, 0, 1, 11], mac_dst=BMAC, seq=5000, ack=1001))
            + record(1, v4tcp(B2, CLIENT, 8080, 40000, SYN | ACK, mac_src=[2, 0, 0, 0, 1, 12], mac_dst=BMAC, seq=5000, ack=1001))
            + record(0, v4tcp(CLIENT, VIP, 40000, 80, ACK, seq=1001, ack=5001))
            + record(0, v4tcp(CLIENT, VIP, 40000, 80, FIN | ACK, seq=1001, ack=5001))
            + record(0, v4tcp(CLIENT, VIP, 40000, 80, RST, seq=1002)),
        'udp-masq': record(0, v4udp(CLIENT, VIP, 40001, 53, b'query')),
        'tcp6': record(0, v6tcp(CLIENT6, VIP6, 40002, 80, SYN)),
        'dr': record(0, v4tcp(CLIENT, VIP, 40003, 443, SYN)),
        'sctp': record(0, sctp_init(CLIENT, VIP, 40004, 80)),
        'icmp-about-flow': record(0, syn) + record(0, icmp_frag_needed([198, 18, 0, 254], VIP, syn[14:])),
        'stray-ack': record(0, v4tcp(CLIENT, VIP, 40005, 80, ACK, seq=7, ack=9)),
        'no-service': record(0, v4tcp(CLIENT, VIP, 40006, 81, SYN)),
    },
}
seeds['parse'] = {name: data[3:3 + struct.unpack('!H', data[1:3])[0]] for name, data in seeds['pipeline'].items()}
for target, files in seeds.items():
    d = os.path.join('corpus', target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, 'seed-' + name), 'wb') as f:
            f.write(data)
print('wrote', sum(len(f) for f in seeds.values()), 'seeds')
