"""Small UDP applications the lab tests run inside site hosts, beside a
natsalon client's forward port (127.0.0.1:7000, delivering to 7001):

- :data:`ECHO` binds 127.0.0.1:7001 and echoes every datagram back with an
  ``echo:`` prefix (prints ``ready`` once bound);
- :data:`PINGER` sends ``ping N`` datagrams to 7000 from 7001 (argv[1] of
  them) and prints ``{"sent": N, "echoed": M}`` once the echoes are in.

Run them as ``[sys.executable, "-c", ECHO]`` in a host."""

ECHO = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 7001))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(4096)
    s.sendto(b"echo:" + data, addr)
"""

PINGER = r"""
import json, socket, sys, time
count = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 7001))
for n in range(count):
    s.sendto(b"ping %d" % n, ("127.0.0.1", 7000))
    time.sleep(0.002)
s.settimeout(3)
got = set()
try:
    while len(got) < count:
        data, _ = s.recvfrom(4096)
        if data.startswith(b"echo:ping "):
            got.add(int(data.split()[-1]))
except socket.timeout:
    pass
print(json.dumps({"sent": count, "echoed": len(got)}), flush=True)
"""
