//! Networking: the first usable PCI NIC (virtio-net, e1000, e1000e) under smoltcp's
//! TCP/IP stack, configured by DHCPv4 or by `ip=ADDR/PREFIX gw=ADDR` on the kernel
//! command line; ICMP echo (`ping`); counters for `net`. The stack is polled from
//! the shell's idle loop, so the console stays usable.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, icmp, tcp, Socket};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, Icmpv4Packet, Icmpv4Repr,
    IpAddress, IpCidr, IpProtocol, Ipv4Cidr, Ipv4Packet, TcpPacket,
};

use crate::arch::x86_64::time;
use crate::drivers::{e1000, pci, virtio_net};

/// A network controller as the stack sees it: whole Ethernet frames in and out.
pub trait Nic: Send {
    /// Driver and model.
    fn name(&self) -> &'static str;
    /// Station address.
    fn mac(&self) -> [u8; 6];
    /// Whether the link is up.
    fn link_up(&self) -> bool;
    /// The next received frame, if any.
    fn receive(&mut self) -> Option<Vec<u8>>;
    /// Queues `frame` for sending; false when the transmit ring is full.
    fn send(&mut self, frame: &[u8]) -> bool;
}

/// Frame and byte counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames dropped because the transmit ring was full.
    pub tx_dropped: u64,
    /// Connection requests (SYNs) held back because no socket listened (the
    /// client's TCP sends them again).
    pub syn_deferred: u64,
}

/// Holds back SYNs to one port beyond the sockets listening on it. smoltcp answers a
/// SYN that no socket accepts with a reset; dropped instead, it is retransmitted by
/// the client a moment later, when a socket listens again (the HTTP server recycles
/// them quickly and keeps a reserve for 503 answers).
#[derive(Debug, Clone, Copy)]
pub struct SynGuard {
    port: u16,
    /// SYNs to `port` that may still pass before the next count of listeners.
    budget: usize,
}

/// Whether `frame` is an Ethernet/IPv4 TCP segment opening a connection (SYN
/// without ACK) to `port`.
fn is_syn_to(frame: &[u8], port: u16) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return false;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return false;
    };
    if ip.next_header() != IpProtocol::Tcp {
        return false;
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return false;
    };
    tcp.syn() && !tcp.ack() && tcp.dst_port() == port
}

/// The NIC with counters, as a smoltcp device.
pub struct Device {
    nic: Box<dyn Nic>,
    /// Traffic so far.
    pub counters: Counters,
    guard: Option<SynGuard>,
}

impl Device {
    /// Holds back SYNs to `port` that no listening socket could take (see
    /// [`SynGuard`]).
    pub fn guard_syns(&mut self, port: u16) {
        self.guard = Some(SynGuard { port, budget: 0 });
    }
}

/// A received frame handed to smoltcp.
pub struct Rx(Vec<u8>);

/// Permission to send one frame.
pub struct Tx<'a>(&'a mut Device);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        if self.0.nic.send(&buf) {
            self.0.counters.tx_frames += 1;
            self.0.counters.tx_bytes += len as u64;
        } else {
            self.0.counters.tx_dropped += 1;
        }
        r
    }
}

impl phy::Device for Device {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        loop {
            let frame = self.nic.receive()?;
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += frame.len() as u64;
            if let Some(g) = &mut self.guard {
                if is_syn_to(&frame, g.port) {
                    if g.budget == 0 {
                        self.counters.syn_deferred += 1;
                        continue;
                    }
                    g.budget -= 1;
                }
            }
            return Some((Rx(frame), Tx(self)));
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(1);
        caps
    }
}

/// How the address was configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// DHCPv4 (the default).
    Dhcp,
    /// `ip=` on the command line.
    Static,
}

/// The interface, its sockets and state.
pub struct Stack {
    /// The NIC.
    pub device: Device,
    /// smoltcp's interface.
    pub iface: Interface,
    /// Every socket (DHCP, ICMP, the HTTP listeners).
    pub sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    icmp: SocketHandle,
    /// Address configuration source.
    pub mode: Mode,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers from DHCP.
    pub dns: Vec<Ipv4Addr>,
    /// PCI address of the NIC.
    pub pci: pci::Address,
    ping_seq: u16,
    /// DHCP leases obtained.
    pub leases: u64,
}

static STACK: spin::Mutex<Option<Stack>> = spin::Mutex::new(None);

/// Network options from the kernel command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetOptions {
    /// Static address and prefix (`ip=10.0.2.15/24`).
    pub ip: Option<(Ipv4Addr, u8)>,
    /// Static gateway (`gw=10.0.2.2`).
    pub gw: Option<Ipv4Addr>,
    /// HTTP port (`port=80`, the default).
    pub port: Option<u16>,
    /// `nonet`: leave the NICs alone.
    pub off: bool,
}

/// Why a command-line network option was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionError {
    /// `ip=` is not ADDR/PREFIX with a prefix of at most 32.
    BadAddress(String),
    /// `gw=` is not an IPv4 address.
    BadGateway(String),
    /// `port=` is not 1..=65535.
    BadPort(String),
}

impl core::fmt::Display for OptionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OptionError::BadAddress(v) => {
                write!(f, "ip={v}: expected ADDR/PREFIX, e.g. ip=10.0.2.15/24")
            }
            OptionError::BadGateway(v) => write!(f, "gw={v}: expected an IPv4 address"),
            OptionError::BadPort(v) => write!(f, "port={v}: expected a port 1-65535"),
        }
    }
}

impl NetOptions {
    /// Reads `ip=`, `gw=`, `port=` and `nonet` from the command line.
    pub fn parse(cmdline: &str) -> (Self, Vec<OptionError>) {
        let mut o = NetOptions::default();
        let mut errors = Vec::new();
        for w in crate::cmdline::words(cmdline) {
            if w == "nonet" {
                o.off = true;
            } else if let Some(v) = w.strip_prefix("ip=") {
                match parse_cidr(v) {
                    Some(c) => o.ip = Some(c),
                    None => errors.push(OptionError::BadAddress(v.into())),
                }
            } else if let Some(v) = w.strip_prefix("gw=") {
                match v.parse() {
                    Ok(a) => o.gw = Some(a),
                    Err(_) => errors.push(OptionError::BadGateway(v.into())),
                }
            } else if let Some(v) = w.strip_prefix("port=") {
                match v.parse::<u16>() {
                    Ok(p) if p > 0 => o.port = Some(p),
                    _ => errors.push(OptionError::BadPort(v.into())),
                }
            }
        }
        (o, errors)
    }
}

/// `10.0.2.15/24` (a bare address means /24).
pub fn parse_cidr(v: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = v.split_once('/').unwrap_or((v, "24"));
    let prefix: u8 = p.parse().ok().filter(|&p| p <= 32)?;
    Some((a.parse().ok()?, prefix))
}

fn now() -> Instant {
    Instant::from_micros(time::uptime_us() as i64)
}

/// Finds a NIC, brings the stack up and starts the HTTP server (boot processor).
pub fn init(cmdline: &str) {
    crate::drivers::rtc::init();
    pci::init();
    let (opts, errors) = NetOptions::parse(cmdline);
    for e in &errors {
        println!("net: {e}");
    }
    if opts.off {
        println!("net: disabled (nonet)");
        return;
    }
    let mut found: Option<(Box<dyn Nic>, pci::Address)> = None;
    for d in pci::devices() {
        if found.is_some() {
            break;
        }
        if virtio_net::matches(d) {
            match virtio_net::probe(d) {
                Ok(n) => found = Some((Box::new(n), d.addr)),
                Err(e) => println!("net: virtio-net at {}: {e}", d.addr),
            }
        } else if e1000::matches(d) {
            match e1000::probe(d) {
                Ok(n) => found = Some((Box::new(n), d.addr)),
                Err(e) => println!("net: e1000 at {}: {e}", d.addr),
            }
        }
    }
    let Some((nic, addr)) = found else {
        println!("net: no supported network controller");
        return;
    };
    let mac = nic.mac();
    let mut device = Device {
        nic,
        counters: Counters::default(),
        guard: None,
    };
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = crate::arch::x86_64::io::rdtsc();
    let mut iface = Interface::new(config, &mut device, now());
    let mut sockets = SocketSet::new(Vec::new());
    let icmp = sockets.add(icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]),
    ));
    let (mode, dhcp, gateway) = match opts.ip {
        Some((ip, prefix)) => {
            iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::Ipv4(Ipv4Cidr::new(ip, prefix)));
            });
            if let Some(gw) = opts.gw {
                let _ = iface.routes_mut().add_default_ipv4_route(gw);
            }
            (Mode::Static, None, opts.gw)
        }
        None => (Mode::Dhcp, Some(sockets.add(dhcpv4::Socket::new())), None),
    };
    let name = device.nic.name();
    let mut stack = Stack {
        device,
        iface,
        sockets,
        dhcp,
        icmp,
        mode,
        gateway,
        dns: Vec::new(),
        pci: addr,
        ping_seq: 0,
        leases: 0,
    };
    crate::httpd::init(
        &mut stack,
        opts.port.unwrap_or(80),
        crate::httpd::api_key_option(cmdline),
    );
    println!(
        "net: {name} at {addr}, MAC {}, {}",
        mac_text(mac),
        match opts.ip {
            Some((ip, p)) => format!("static {ip}/{p}"),
            None => "DHCP".into(),
        }
    );
    *STACK.lock() = Some(stack);
}

fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

impl Stack {
    /// Moves frames and timers once; applies DHCP results.
    pub fn poll(&mut self) {
        if let Some(g) = &mut self.device.guard {
            let port = g.port;
            g.budget = self
                .sockets
                .iter()
                .filter(|(_, s)| match s {
                    Socket::Tcp(t) => {
                        t.state() == tcp::State::Listen && t.listen_endpoint().port == port
                    }
                    _ => false,
                })
                .count();
        }
        self.iface.poll(now(), &mut self.device, &mut self.sockets);
        let Some(h) = self.dhcp else { return };
        let had_address = self.address().is_some();
        let event = self.sockets.get_mut::<dhcpv4::Socket>(h).poll();
        match event {
            Some(dhcpv4::Event::Configured(c)) => {
                let addr = c.address;
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(addr));
                });
                self.iface.routes_mut().remove_default_ipv4_route();
                if let Some(r) = c.router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                }
                self.gateway = c.router;
                self.dns = c.dns_servers.iter().copied().collect();
                // Not printed: it would land in the middle of whatever the console
                // shows; `net` reports it.
                self.leases += 1;
            }
            // smoltcp reports "deconfigured" once at the start too: only a lost
            // lease is news.
            Some(dhcpv4::Event::Deconfigured) if had_address => {
                self.iface.update_ip_addrs(|a| a.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                self.gateway = None;
            }
            _ => {}
        }
    }

    /// The configured IPv4 address with its prefix.
    pub fn address(&self) -> Option<Ipv4Cidr> {
        // With IPv4 the only protocol, every address is an IPv4 one.
        self.iface
            .ip_addrs()
            .iter()
            .map(|IpCidr::Ipv4(c)| *c)
            .next()
    }
}

/// Runs `f` on the stack (None when there is no NIC or the stack is busy elsewhere).
pub fn with_stack<R>(f: impl FnOnce(&mut Stack) -> R) -> Option<R> {
    let mut guard = STACK.try_lock()?;
    guard.as_mut().map(f)
}

/// Polls the stack once (no-op without a NIC).
pub fn poll() {
    with_stack(Stack::poll);
}

/// Whether a NIC is up.
pub fn present() -> bool {
    STACK.lock().is_some()
}

/// `net`: driver, link, MAC, address, gateway, counters, HTTP figures.
pub fn print_status() {
    let shown = with_stack(|s| {
        s.poll();
        println!(
            "interface: {} at {} (PCI), link {}",
            s.device.nic.name(),
            s.pci,
            if s.device.nic.link_up() { "up" } else { "down" }
        );
        println!("  MAC:      {}", mac_text(s.device.nic.mac()));
        match s.address() {
            Some(a) => println!(
                "  IPv4:     {a} ({})",
                match s.mode {
                    Mode::Dhcp => format!("DHCP, {} lease(s)", s.leases),
                    Mode::Static => "static".into(),
                }
            ),
            None => println!("  IPv4:     none yet (waiting for DHCP)"),
        }
        match s.gateway {
            Some(g) => println!("  gateway:  {g}"),
            None => println!("  gateway:  none"),
        }
        if !s.dns.is_empty() {
            let dns: Vec<String> = s.dns.iter().map(|d| format!("{d}")).collect();
            println!("  DNS:      {}", dns.join(", "));
        }
        let c = s.device.counters;
        println!(
            "  received: {} frames, {} bytes; sent: {} frames, {} bytes, {} dropped",
            c.rx_frames, c.rx_bytes, c.tx_frames, c.tx_bytes, c.tx_dropped
        );
        println!(
            "  SYNs held back (no listening socket; the client retries): {}",
            c.syn_deferred
        );
        crate::httpd::print_status(s);
    });
    if shown.is_none() {
        println!("no network interface (supported: virtio-net, e1000, e1000e)");
    }
}

/// `ping ADDR [COUNT]`: ICMP echo requests one second apart.
pub fn ping(target: &str, count: u32) {
    let Ok(dest) = target.parse::<Ipv4Addr>() else {
        println!("ping: `{target}` is not an IPv4 address");
        return;
    };
    let mut guard = STACK.lock();
    let Some(s) = guard.as_mut() else {
        println!("ping: no network interface");
        return;
    };
    let ident = 0x4542u16;
    {
        let sock = s.sockets.get_mut::<icmp::Socket>(s.icmp);
        if !sock.is_open() && sock.bind(icmp::Endpoint::Ident(ident)).is_err() {
            println!("ping: cannot bind the ICMP socket");
            return;
        }
    }
    let payload = b"embodios ping 0123456789abcdef";
    let caps = ChecksumCapabilities::default();
    let mut received = 0;
    for _ in 0..count {
        s.ping_seq = s.ping_seq.wrapping_add(1);
        let seq = s.ping_seq;
        let repr = Icmpv4Repr::EchoRequest {
            ident,
            seq_no: seq,
            data: payload,
        };
        // Wait for an address (DHCP) for up to 5 s before the first request.
        let t_addr = time::uptime_ms();
        while s.address().is_none() && time::uptime_ms() - t_addr < 5000 {
            s.poll();
        }
        let t0 = time::uptime_us();
        let mut sent = false;
        let mut got = None;
        while time::uptime_us() - t0 < 1_000_000 {
            s.poll();
            let sock = s.sockets.get_mut::<icmp::Socket>(s.icmp);
            if !sent && sock.can_send() {
                if let Ok(buf) = sock.send(repr.buffer_len(), IpAddress::Ipv4(dest)) {
                    let mut packet = Icmpv4Packet::new_unchecked(buf);
                    repr.emit(&mut packet, &caps);
                    sent = true;
                }
            }
            while let Ok((data, from)) = sock.recv() {
                let Ok(packet) = Icmpv4Packet::new_checked(data) else {
                    continue;
                };
                let mut c = ChecksumCapabilities::default();
                c.icmpv4 = Checksum::Rx;
                if let Ok(Icmpv4Repr::EchoReply {
                    ident: i,
                    seq_no,
                    data,
                }) = Icmpv4Repr::parse(&packet, &c)
                {
                    if i == ident && seq_no == seq && from == IpAddress::Ipv4(dest) {
                        got = Some((time::uptime_us() - t0, data.len()));
                    }
                }
            }
            if got.is_some() {
                break;
            }
        }
        match got {
            Some((us, len)) => {
                received += 1;
                println!(
                    "{len} bytes from {dest}: icmp_seq={seq} time={}.{:03} ms",
                    us / 1000,
                    us % 1000
                );
                // Keep one-second spacing, still serving the network meanwhile.
                while time::uptime_us() - t0 < 1_000_000 && count > 1 {
                    s.poll();
                }
            }
            None if !sent => println!("ping {dest}: could not send (no address or route)"),
            None => println!("ping {dest}: icmp_seq={seq} timed out"),
        }
    }
    println!(
        "--- {dest}: {count} sent, {received} received, {}% loss ---",
        (count - received) * 100 / count.max(1)
    );
}
