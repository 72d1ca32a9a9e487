"""Operating the daemons: counters (:mod:`natsalon.ops.stats`)."""
