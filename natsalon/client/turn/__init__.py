"""The TURN client: one allocation on a TURN server (natsalon's salon or
any other, e.g. coturn), for relayed paths (:mod:`.client`)."""
