//! Network events: ConnectionCreate records (hits) and their traffic (bytes).
//!
//! Hooks:
//! - `tracepoint/sock/inet_sock_set_state` (format in
//!   /sys/kernel/tracing/events/sock/inet_sock_set_state/format; fired by
//!   `inet_sk_state_store`/`tcp_set_state`, include/trace/events/sock.h):
//!   CLOSE->SYN_SENT runs in the connect() caller (tcp_v4_connect), before
//!   the source port is chosen, so the owner is parked in PENDING and the
//!   outbound connection is counted when the socket leaves SYN_SENT (to
//!   ESTABLISHED, or CLOSE when refused), with the full 4-tuple.
//!   ->LISTEN runs in the listen() caller: its owner is kept in LISTENERS
//!   (listeners older than the agent are written there by the agent, from
//!   /proc: `Programs::seed_listeners` in agent-user/src/ebpf.rs).
//!   SYN_RECV->ESTABLISHED of an accepted child runs in softirq: counted as
//!   inbound and attributed to the listener's owner.
//! - `cgroup_skb/ingress` and `cgroup_skb/egress` on the cgroup v2 root see
//!   every packet of every socket (`sk_filter` on receive, `ip_finish_output`
//!   / `ip6_finish_output` on send): bytes per 5-tuple, new UDP/ICMP flows,
//!   DNS queries sent and answers received (both copied to the same ring
//!   buffer, so userspace sees a query before its answer and accepts only
//!   answers to queries). They always return 1 (allow).
//! - `cgroup/sock_create` runs in the socket() caller: owners of UDP, ICMP
//!   and raw sockets, keyed by socket cookie for the cgroup_skb programs.
//! - `tracepoint/sock/sock_send_length` and `sock_recv_length` (6.3+; fired
//!   by `sock_sendmsg_nosec` / `sock_recvmsg_nosec`, include/trace/events/sock.h)
//!   when [`FLAG_NET_TCP_BYTES_BY_CALL`] is set: TCP payload bytes once per
//!   send or receive call instead of once per packet, which is what keeps a
//!   bulk transfer cheap. The cgroup_skb programs then only take the first
//!   payload bytes of a TCP connection (recognised from the socket's own
//!   byte counters, without a map lookup) and DNS over TCP.
// Map calls take `impl Borrow<K>`: passing references keeps owners, argv
// and 56-byte keys where they are instead of copying them onto the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use agent_common::{
    ConnKey, Control, Counter, DnsEvent, FlowClaim, ListenKey, NetScratch, Owner, ProcId, TrafficValue, AF_INET,
    AF_INET6, CMDLINE_CAP, DIR_IN, DIR_OUT, DNS_CAP, DNS_KIND_ANSWER, DNS_KIND_QUERY, FLAG_NET, FLAG_NET_AGG_EPHEMERAL,
    FLAG_NET_PER_EVENT, FLAG_NET_TCP_BYTES_BY_CALL, FLOW_IDLE_NS, HEAD_LEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP,
};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_probe_read_kernel, generated as gen},
    macros::{cgroup_skb, cgroup_sock, tracepoint},
    programs::{SkBuffContext, SockContext, TracePointContext},
    EbpfContext,
};

use crate::{
    kernel::{
        add_hit, add_rollup, atomic_add, boot_ns, control, copy, count, current_task, offsets, read_argv, read_field,
        TpRecord,
    },
    maps::{
        ARGV, CONNR_0, CONNR_1, CONN_0, CONN_1, DNS_EVENTS, FLOWS, FLOW_CLAIMS, LISTENERS, NET_SCRATCH, PENDING,
        SOCK_OWNER, TRAF_0, TRAF_1,
    },
};

/// TCP states, include/net/tcp_states.h.
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const DNS_PORT: u16 = 53;
/// include/linux/socket.h: a peeking receive leaves the bytes to be read again.
const MSG_PEEK: i32 = 2;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_state(&ctx);
    0
}

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_skb(&ctx, false);
    1 // allow: this program only watches
}

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_skb(&ctx, true);
    1
}

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let _ = try_sock_create(&ctx);
    1 // allow
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_bytes(&ctx, true);
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_bytes(&ctx, false);
    0
}

#[inline(always)]
fn enabled() -> Option<Control> {
    let ctl = control()?;
    (ctl.flags & FLAG_NET != 0).then_some(ctl)
}

/// Network namespace inode of a socket: `sk->__sk_common.skc_net.net->ns.inum`.
#[inline(always)]
fn sock_netns(ctl: &Control, sk: u64) -> u32 {
    let off = offsets();
    let read = || -> Result<u32, i64> {
        let net: *const u8 = unsafe { read_field(sk as *const u8, off.sk_net)? };
        unsafe { read_field::<u32>(net, off.net_inum) }
    };
    match read() {
        Ok(n) => n,
        Err(_) => {
            count(ctl, Counter::NetReadFailed);
            0
        }
    }
}

/// The calling process as a socket owner. Only meaningful in process context.
/// Reads the task directly rather than through `bpf_get_current_comm` and
/// friends, which cgroup programs may not call on every kernel. The
/// command line goes to ARGV, once per process.
#[inline(always)]
fn current_owner(scratch: &mut NetScratch, cmdline_max: u32) {
    let off = offsets();
    let task = current_task();
    let o = &mut scratch.owner;
    clear_owner(o);
    o.process.tgid = unsafe { read_field::<i32>(task, off.task_tgid) }.unwrap_or(0) as u32;
    o.process.start_ns = unsafe { read_field::<u64>(task, off.task_start_time) }.unwrap_or(0);
    if let Ok(cred) = unsafe { read_field::<*const u8>(task, off.task_cred) } {
        o.uid = unsafe { read_field::<u32>(cred, off.cred_uid) }.unwrap_or(0);
    }
    o.comm = unsafe { read_field::<[u8; 16]>(task, off.task_comm) }.unwrap_or([0; 16]);
    // A process's argv is read at its first socket event, not at every one:
    // a connect storm reads it once.
    if unsafe { ARGV.get(&o.process) }.is_some() {
        return;
    }
    let argv = &mut scratch.argv;
    argv._pad = 0;
    argv.len = task_argv(task, &mut argv.bytes, cmdline_max).unwrap_or(0);
    // -EEXIST: another CPU stored it first, the same bytes.
    let _ = ARGV.insert(&scratch.owner.process, &scratch.argv, BPF_NOEXIST as u64);
}

/// The bytes of `task`'s argv copied into `dst`: `mm->arg_start..arg_end`,
/// as process.rs reads it, but through probe reads (this runs in cgroup
/// programs too, which cannot all take a BTF-typed task). A kernel thread
/// has no mm, and no argv.
#[inline(always)]
fn task_argv(task: *const u8, dst: &mut [u8; CMDLINE_CAP], max: u32) -> Result<u32, i64> {
    let off = offsets();
    let mm = unsafe { read_field::<*const u8>(task, off.task_mm) }?;
    if mm.is_null() {
        return Ok(0);
    }
    let start = unsafe { read_field::<u64>(mm, off.mm_arg_start) }?;
    let end = unsafe { read_field::<u64>(mm, off.mm_arg_end) }?;
    Ok(read_argv(dst, start, end, max)?.0)
}

/// An unknown owner.
#[inline(always)]
fn clear_owner(o: &mut Owner) {
    o.process = ProcId::default();
    o.uid = 0;
    o._pad = 0;
    o.comm = [0; 16];
}

/// IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes plain IPv4, as the packets are:
/// a dual-stack socket's tracepoint says AF_INET6, its packets are IPv4.
#[inline(always)]
fn normalize(key: &mut ConnKey) {
    let a = &key.laddr;
    let mapped = |a: &[u8; 16]| a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff;
    if key.family == AF_INET6 && mapped(a) && mapped(&key.raddr) {
        let (l, r) = ([a[12], a[13], a[14], a[15]], [key.raddr[12], key.raddr[13], key.raddr[14], key.raddr[15]]);
        key.laddr = [0; 16];
        key.raddr = [0; 16];
        key.laddr[..4].copy_from_slice(&l);
        key.raddr[..4].copy_from_slice(&r);
        key.family = AF_INET;
    }
}

/// Counts one connection event and adds a hit to its record. The owner is in
/// `scratch.owner` (zeroed when unknown).
#[inline(always)]
fn record_conn(ctl: &Control, key: &mut ConnKey, direction: u8) -> Result<(), i64> {
    count(ctl, Counter::ConnSeen);
    if ctl.flags & FLAG_NET_PER_EVENT != 0 {
        key.nonce = boot_ns();
    }
    if direction == DIR_OUT && ctl.flags & FLAG_NET_AGG_EPHEMERAL != 0 {
        key.lport = 0;
    }
    let scratch = unsafe { &mut *NET_SCRATCH.get_ptr_mut(0).ok_or(0)? };
    let value = &mut scratch.conn as *mut agent_common::ConnValue;
    let owner = &scratch.owner as *const Owner;
    let (map, rollups) = if ctl.generation & 1 == 0 { (&CONN_0, &CONNR_0) } else { (&CONN_1, &CONNR_1) };
    let hit_of = |v: *mut agent_common::ConnValue| unsafe { &mut (*v).hit_count as *mut u64 };
    let staged = add_hit(
        ctl,
        map,
        key,
        hit_of,
        || {
            let v = unsafe { &mut *value };
            v.hit_count = 1;
            v.first_seen_ns = boot_ns();
            v.direction = direction;
            v._pad = [0; 7];
            copy(&mut v.owner, unsafe { &*owner });
            Some(value as *const agent_common::ConnValue)
        },
        Counter::ConnRaceLost,
    );
    if staged.is_err() {
        // A storm of ports must not hide a new peer: ports 0 (README, Output).
        (key.lport, key.rport, key.nonce) = (0, 0, 0);
        let counters = [Counter::ConnRolledUp, Counter::ConnMapFull, Counter::ConnRaceLost];
        add_rollup(ctl, rollups, key, hit_of, value, counters);
    }
    Ok(())
}

fn try_tcp_state(ctx: &TracePointContext) -> Result<(), i64> {
    let ctl = enabled().ok_or(0)?;
    let off = offsets();
    let rec = TpRecord::read(ctx)?;
    let protocol: u16 = rec.get(off.tp_protocol);
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let old: i32 = rec.get(off.tp_oldstate);
    let new: i32 = rec.get(off.tp_newstate);
    let sk: u64 = rec.get(off.tp_skaddr);
    let family: u16 = rec.get(off.tp_family);
    let sport: u16 = rec.get(off.tp_sport);
    let scratch = unsafe { &mut *NET_SCRATCH.get_ptr_mut(0).ok_or(0)? };

    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        // connect(): the caller owns the socket; the port comes later.
        current_owner(scratch, ctl.cmdline_max);
        let _ = PENDING.insert(&sk, &scratch.owner, BPF_ANY as u64);
        return Ok(());
    }
    // LISTEN->SYN_RECV is an accepted child being cloned from its listener
    // (inet_csk_clone_lock): only LISTEN->CLOSE ends a listener.
    if new == TCP_LISTEN || (old == TCP_LISTEN && new == TCP_CLOSE) {
        let lk = ListenKey { netns: sock_netns(&ctl, sk), family, port: sport };
        if new == TCP_LISTEN {
            // The port is known only if the socket was bound before listen().
            current_owner(scratch, ctl.cmdline_max);
            let _ = LISTENERS.insert(&lk, &scratch.owner, BPF_ANY as u64);
        } else {
            let _ = LISTENERS.remove(&lk);
        }
        return Ok(());
    }
    let direction = if old == TCP_SYN_SENT {
        DIR_OUT
    } else if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        DIR_IN
    } else {
        return Ok(());
    };

    let mut key = ConnKey::zeroed();
    key.netns = sock_netns(&ctl, sk);
    key.proto = IPPROTO_TCP;
    key.lport = sport;
    key.rport = rec.get(off.tp_dport);
    if family == AF_INET as u16 {
        key.family = AF_INET;
        let s: [u8; 4] = rec.get(off.tp_saddr);
        let d: [u8; 4] = rec.get(off.tp_daddr);
        key.laddr[..4].copy_from_slice(&s);
        key.raddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 as u16 {
        key.family = AF_INET6;
        key.laddr = rec.get(off.tp_saddr_v6);
        key.raddr = rec.get(off.tp_daddr_v6);
    } else {
        return Ok(());
    }

    let owner = if direction == DIR_OUT {
        unsafe { PENDING.get(&sk) }
    } else {
        // The child was cloned from the listener: same family, same port.
        let lk = ListenKey { netns: key.netns, family, port: sport };
        unsafe { LISTENERS.get(&lk) }
    };
    match owner {
        Some(o) => copy(&mut scratch.owner, o),
        None => clear_owner(&mut scratch.owner),
    }
    if direction == DIR_OUT {
        let _ = PENDING.remove(&sk);
    }
    normalize(&mut key);
    record_conn(&ctl, &mut key, direction)
}

/// The payload bytes of one TCP send or receive call, added to the traffic
/// record of the socket's connection. The tracepoint runs for every socket
/// family; everything but TCP leaves after one read.
fn try_tcp_bytes(ctx: &TracePointContext, send: bool) -> Result<(), i64> {
    let ctl = enabled().ok_or(0)?;
    if ctl.flags & FLAG_NET_TCP_BYTES_BY_CALL == 0 {
        return Ok(());
    }
    let off = offsets();
    let rec = TpRecord::read(ctx)?;
    let protocol: u16 = rec.get(off.tp_len_protocol);
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let ret: i32 = rec.get(off.tp_len_ret);
    if ret <= 0 {
        return Ok(()); // an error or nothing moved
    }
    if !send {
        let flags: i32 = rec.get(off.tp_len_flags);
        if flags & MSG_PEEK != 0 {
            return Ok(());
        }
    }
    let family: u16 = rec.get(off.tp_len_family);
    let sk: u64 = rec.get(off.tp_len_sk);
    let mut key = ConnKey::zeroed();
    if sock_conn_key(sk, family, &mut key).is_err() {
        count(&ctl, Counter::TcpSocketUnreadable);
        return Ok(());
    }
    key.netns = sock_netns(&ctl, sk);
    normalize(&mut key);
    let (bytes_in, bytes_out) = if send { (0, ret as u64) } else { (ret as u64, 0) };
    add_traffic(&ctl, &key, bytes_in, bytes_out, false, false, |_| {});
    Ok(())
}

/// A connected TCP socket's 4-tuple from its `sock_common`, oriented from
/// the socket as packet keys are: local is the bound address and port.
#[inline(always)]
fn sock_conn_key(sk: u64, family: u16, key: &mut ConnKey) -> Result<(), i64> {
    let off = offsets();
    let base = sk as *const u8;
    key.proto = IPPROTO_TCP;
    // Both in network order. Not skc_num: a socket that reached TIME_WAIT
    // with data still queued for reading has given its port back (0).
    key.lport = u16::from_be(unsafe { read_field::<u16>(base, off.inet_sport)? });
    key.rport = u16::from_be(unsafe { read_field::<u16>(base, off.skc_dport)? });
    if family == AF_INET as u16 {
        key.family = AF_INET;
        let l: [u8; 4] = unsafe { read_field(base, off.skc_rcv_saddr)? };
        let r: [u8; 4] = unsafe { read_field(base, off.skc_daddr)? };
        key.laddr[..4].copy_from_slice(&l);
        key.raddr[..4].copy_from_slice(&r);
    } else if family == AF_INET6 as u16 {
        key.family = AF_INET6;
        key.laddr = unsafe { read_field(base, off.skc_v6_rcv_saddr)? };
        key.raddr = unsafe { read_field(base, off.skc_v6_daddr)? };
    } else {
        return Err(0);
    }
    Ok(())
}

fn try_sock_create(ctx: &SockContext) -> Result<(), i64> {
    let ctl = enabled().ok_or(0)?;
    let ty = unsafe { (*ctx.sock).type_ };
    // TCP sockets get their owner from the state tracepoint.
    if ty != SOCK_DGRAM && ty != SOCK_RAW {
        return Ok(());
    }
    let cookie = unsafe { gen::bpf_get_socket_cookie(ctx.as_ptr()) };
    let scratch = unsafe { &mut *NET_SCRATCH.get_ptr_mut(0).ok_or(0)? };
    current_owner(scratch, ctl.cmdline_max);
    let _ = SOCK_OWNER.insert(&cookie, &scratch.owner, BPF_ANY as u64);
    Ok(())
}

/// Reads `N` bytes of the packet at `offset` (from the network header): in
/// place when the linear data holds them (direct packet access, allowed to
/// cgroup_skb since 5.2), which is where headers are, else copied with
/// bpf_skb_load_bytes.
#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Result<[u8; N], i64> {
    // Bounded so that the verifier accepts it as a packet offset.
    if offset < 0x4000 {
        let skb = ctx.skb.skb;
        let data = unsafe { (*skb).data } as usize;
        let end = unsafe { (*skb).data_end } as usize;
        let at = data + offset as usize;
        if at + N <= end {
            return Ok(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) });
        }
    }
    let mut buf = [0u8; N];
    let ret =
        unsafe { gen::bpf_skb_load_bytes(ctx.as_ptr() as *const _, offset, buf.as_mut_ptr() as *mut _, N as u32) };
    if ret != 0 {
        return Err(ret);
    }
    Ok(buf)
}

/// The packet's socket as a kernel address, 0 when it has none. `skb->sk` is
/// a PTR_TO_SOCK_COMMON the verifier forbids arithmetic on; copying the
/// pointer through the stack with bpf_probe_read_kernel turns it into a
/// plain number that can be offset and read like any kernel address
/// (allowed to CAP_PERFMON loaders). A number, not an `Option`: LLVM reads
/// an `Option<u64>`'s payload even on the `None` path, stack that 5.10's
/// verifier refuses to read uninitialised.
#[inline(always)]
fn skb_sock(ctl: &Control, ctx: &SkBuffContext) -> u64 {
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 0;
    }
    let slot = sk;
    match unsafe { bpf_probe_read_kernel(&slot as *const _ as *const u64) } {
        Ok(v) => v,
        Err(_) => {
            count(ctl, Counter::NetReadFailed);
            0
        }
    }
}

/// The network namespace of socket `sk` (0 when there is none).
#[inline(always)]
fn skb_netns(ctl: &Control, sk: u64) -> u32 {
    if sk == 0 {
        return 0;
    }
    sock_netns(ctl, sk)
}

/// Whether this TCP packet carries its connection's first payload in its
/// direction, from the socket's RFC 4898 byte counters: `bytes_sent` has
/// already been advanced by this packet when it reaches the egress hook
/// (`__tcp_transmit_skb` counts before `queue_xmit`); `bytes_received` is
/// advanced only after the ingress hook (`tcp_filter` runs first). A
/// retransmitted first segment does not match again; its head was kept the
/// first time.
#[inline(always)]
fn first_tcp_payload(sk: u64, egress: bool, payload: u32) -> bool {
    if sk == 0 {
        return false;
    }
    let off = offsets();
    let (offset, first) = if egress { (off.tcp_bytes_sent, payload as u64) } else { (off.tcp_bytes_received, 0) };
    let counter = unsafe { read_field::<u64>(sk as *const u8, offset) };
    counter == Ok(first)
}

fn try_skb(ctx: &SkBuffContext, egress: bool) -> Result<(), i64> {
    let ctl = enabled().ok_or(0)?;
    let len = ctx.len();
    // 20 bytes: a whole IPv4 header, or the first half of an IPv6 one.
    let h: [u8; 20] = load(ctx, 0)?;
    let mut key = ConnKey::zeroed();
    let (mut l4, mut proto);
    let (src, dst);
    match h[0] >> 4 {
        4 => {
            // A non-first fragment has no L4 header. Egress runs before
            // fragmentation and ingress after reassembly, so these are rare.
            if (u16::from_be_bytes([h[6], h[7]]) & 0x1fff) != 0 {
                return Ok(());
            }
            l4 = ((h[0] & 0x0f) as u32) * 4;
            proto = h[9];
            key.family = AF_INET;
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s[..4].copy_from_slice(&h[12..16]);
            d[..4].copy_from_slice(&h[16..20]);
            (src, dst) = (s, d);
        }
        6 => {
            let rest: [u8; 20] = load(ctx, 20)?;
            l4 = 40;
            proto = h[6];
            key.family = AF_INET6;
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s[..12].copy_from_slice(&h[8..20]);
            s[12..].copy_from_slice(&rest[..4]);
            d.copy_from_slice(&rest[4..20]);
            (src, dst) = (s, d);
            // Skip a few extension headers (hop-by-hop 0, routing 43, destination options 60).
            for _ in 0..3 {
                if proto != 0 && proto != 43 && proto != 60 {
                    break;
                }
                let e: [u8; 2] = load(ctx, l4)?;
                proto = e[0];
                l4 += (e[1] as u32 + 1) * 8;
            }
        }
        _ => return Ok(()),
    }
    let l4_len = len.saturating_sub(l4);
    let (sport, dport, payload_off, payload, flow_id);
    match proto {
        IPPROTO_TCP => {
            let t: [u8; 13] = load(ctx, l4)?;
            sport = u16::from_be_bytes([t[0], t[1]]);
            dport = u16::from_be_bytes([t[2], t[3]]);
            let doff = ((t[12] >> 4) as u32) * 4;
            payload_off = l4 + doff;
            payload = l4_len.saturating_sub(doff);
            flow_id = 0;
        }
        IPPROTO_UDP => {
            let u: [u8; 4] = load(ctx, l4)?;
            sport = u16::from_be_bytes([u[0], u[1]]);
            dport = u16::from_be_bytes([u[2], u[3]]);
            payload_off = l4 + 8;
            payload = l4_len.saturating_sub(8);
            flow_id = 0;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let i: [u8; 6] = load(ctx, l4)?;
            sport = 0;
            dport = 0;
            payload_off = l4;
            payload = l4_len;
            // Echo request/reply: the identifier tells one ping run from the next.
            let echo = matches!((proto, i[0]), (IPPROTO_ICMP, 0 | 8) | (IPPROTO_ICMPV6, 128 | 129));
            flow_id = if echo { u16::from_be_bytes([i[4], i[5]]) } else { 0 };
        }
        _ => return Ok(()),
    }
    let remote_port = if egress { dport } else { sport };
    let dns = remote_port == DNS_PORT;

    // With TCP bytes counted per call, a TCP packet matters only for the
    // connection's first payload or for DNS: most leave here, before the
    // key is built or any map is touched.
    let tcp_by_call = proto == IPPROTO_TCP && ctl.flags & FLAG_NET_TCP_BYTES_BY_CALL != 0;
    if tcp_by_call && payload == 0 {
        return Ok(());
    }
    let sk = skb_sock(&ctl, ctx);
    let (counted, want_head) = if tcp_by_call {
        let first = first_tcp_payload(sk, egress, payload);
        if !first && !dns {
            return Ok(());
        }
        (0, first)
    } else {
        (payload as u64, payload > 0)
    };
    // Egress: the source is local. Ingress: the destination is.
    if egress {
        (key.laddr, key.raddr, key.lport, key.rport) = (src, dst, sport, dport);
    } else {
        (key.laddr, key.raddr, key.lport, key.rport) = (dst, src, dport, sport);
    }
    key.proto = proto;
    key.netns = skb_netns(&ctl, sk);
    let (bytes_in, bytes_out) = if egress { (0, counted) } else { (counted, 0) };
    let dns_query = egress && dns && payload > 0;
    add_traffic(&ctl, &key, bytes_in, bytes_out, dns_query, want_head, |v| fill_head(ctx, v, payload_off, payload));

    // Before new_flow, which may zero the key's local port.
    if dns && payload > 0 && (proto == IPPROTO_UDP || proto == IPPROTO_TCP) {
        copy_dns(ctx, &ctl, &key, egress, payload_off, payload);
    }
    if proto != IPPROTO_TCP {
        new_flow(ctx, &ctl, &mut key, flow_id, egress)?;
    }
    Ok(())
}

/// Adds bytes (and a DNS query) to a traffic record, creating it when new.
/// `fill_head` keeps the first payload bytes when `want_head` and the
/// record has none yet.
#[inline(always)]
fn add_traffic(
    ctl: &Control,
    key: &ConnKey,
    bytes_in: u64,
    bytes_out: u64,
    dns_query: bool,
    want_head: bool,
    fill_head: impl Fn(&mut TrafficValue),
) {
    let map = if ctl.generation & 1 == 0 { &TRAF_0 } else { &TRAF_1 };
    let v = match map.get_ptr_mut(key) {
        Some(v) => v,
        None => {
            let mut init = TrafficValue {
                bytes_in,
                bytes_out,
                dns_queries: dns_query as u64,
                first_seen_ns: boot_ns(),
                ..Default::default()
            };
            if want_head {
                fill_head(&mut init);
            }
            match map.insert(key, &init, BPF_NOEXIST as u64) {
                Ok(()) => return,
                // Another CPU inserted it since our lookup: add to theirs.
                Err(-17) => match map.get_ptr_mut(key) {
                    Some(v) => v,
                    None => return lost(ctl, bytes_in | bytes_out, dns_query),
                },
                Err(_) => return lost(ctl, bytes_in | bytes_out, dns_query),
            }
        }
    };
    let v = unsafe { &mut *v };
    if bytes_out != 0 {
        atomic_add(&mut v.bytes_out, bytes_out);
    }
    if bytes_in != 0 {
        atomic_add(&mut v.bytes_in, bytes_in);
    }
    if dns_query {
        atomic_add(&mut v.dns_queries, 1);
    }
    if want_head && v.head_len == 0 {
        // Two CPUs may both write the head of their first payload; either
        // one is a first payload of this record.
        let mut tmp = TrafficValue::default();
        fill_head(&mut tmp);
        v.head = tmp.head;
        v.head_len = tmp.head_len;
    }
}

/// A traffic update found the map full. Only lost bytes and queries are
/// counted: a packet that brought only a head costs the application
/// protocol guess its payload evidence, not a figure.
#[inline(always)]
fn lost(ctl: &Control, bytes: u64, dns_query: bool) {
    if bytes != 0 || dns_query {
        count(ctl, Counter::TrafficMapFull);
    }
}

/// Copies the first bytes of the payload, for the application protocol guess.
#[inline(always)]
fn fill_head(ctx: &SkBuffContext, v: &mut TrafficValue, off: u32, payload: u32) {
    if payload >= HEAD_LEN as u32 {
        if let Ok(h) = load::<HEAD_LEN>(ctx, off) {
            v.head = h;
            v.head_len = HEAD_LEN as u32;
        }
    } else if payload >= 4 {
        if let Ok(h) = load::<4>(ctx, off) {
            v.head[..4].copy_from_slice(&h);
            v.head_len = 4;
        }
    }
}

/// Sends a DNS message to userspace: a query sent (egress) or an answer
/// received; userspace names addresses from answers that match a query.
/// DNS over TCP: only a segment that starts with a message is of use, and
/// only its first message (pipelined queries after it are not seen).
#[inline(always)]
fn copy_dns(ctx: &SkBuffContext, ctl: &Control, key: &ConnKey, egress: bool, off: u32, payload: u32) {
    // DNS over TCP starts with a two-byte length.
    let (off, payload) = if key.proto == IPPROTO_TCP { (off + 2, payload.saturating_sub(2)) } else { (off, payload) };
    if payload < 12 {
        return; // shorter than a DNS header
    }
    let Some(mut entry) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
        count(ctl, if egress { Counter::DnsQueryRingFull } else { Counter::DnsRingFull });
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let mut n = payload;
    if n > DNS_CAP as u32 {
        n = DNS_CAP as u32;
    }
    ev.ts_ns = boot_ns();
    copy(&mut ev.key, key);
    ev.kind = if egress { DNS_KIND_QUERY } else { DNS_KIND_ANSWER };
    ev._pad = [0; 5];
    // n is in 12..=DNS_CAP already; the mask restates that as 1..=DNS_CAP
    // in a form the verifier tracks (LLVM drops range checks it proved).
    const _: () = assert!(DNS_CAP.is_power_of_two());
    let n = ((n.wrapping_sub(1)) & (DNS_CAP as u32 - 1)) + 1;
    let ret = unsafe { gen::bpf_skb_load_bytes(ctx.as_ptr() as *const _, off, ev.data.as_mut_ptr() as *mut _, n) };
    if ret != 0 {
        // Only when the packet is shorter than its headers said: counted
        // like a full ring, the message is lost either way.
        count(ctl, if egress { Counter::DnsQueryRingFull } else { Counter::DnsRingFull });
        entry.discard(0);
        return;
    }
    ev.len = n as u16;
    entry.submit(0);
}

/// UDP and ICMP have no handshake: a flow is new when its 5-tuple (for ICMP
/// echo, the identifier) had no packet in the last FLOW_IDLE_NS.
#[inline(always)]
fn new_flow(ctx: &SkBuffContext, ctl: &Control, key: &mut ConnKey, flow_id: u16, egress: bool) -> Result<(), i64> {
    let now = boot_ns();
    let mut fk = *key;
    fk.lport = if key.proto == IPPROTO_UDP { key.lport } else { flow_id };
    let is_new = match FLOWS.get_ptr_mut(&fk) {
        Some(last) => {
            // Plain loads and stores: a racing CPU may store a time a few
            // microseconds older, which no idle gap notices.
            let seen = unsafe { core::ptr::read_volatile(last) };
            unsafe { core::ptr::write_volatile(last, now) };
            // Every CPU that read this same idle time tries the claim;
            // exactly one insert succeeds (FlowClaim).
            now.saturating_sub(seen) > FLOW_IDLE_NS && {
                let claim = FlowClaim { flow: fk, last_ns: seen };
                // -EEXIST: another CPU counted it. Another error (no free
                // LRU node) counts it here rather than losing it.
                !matches!(FLOW_CLAIMS.insert(&claim, &0, BPF_NOEXIST as u64), Err(-17))
            }
        }
        None => FLOWS.insert(&fk, &now, BPF_NOEXIST as u64).is_ok(),
    };
    if !is_new {
        return Ok(());
    }
    let scratch = unsafe { &mut *NET_SCRATCH.get_ptr_mut(0).ok_or(0)? };
    let cookie = unsafe { gen::bpf_get_socket_cookie(ctx.as_ptr()) };
    match unsafe { SOCK_OWNER.get(&cookie) } {
        Some(o) => copy(&mut scratch.owner, o),
        None => clear_owner(&mut scratch.owner),
    }
    record_conn(ctl, key, if egress { DIR_OUT } else { DIR_IN })
}
