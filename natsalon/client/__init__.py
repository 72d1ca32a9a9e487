"""The client half: the socket demultiplexer (:mod:`.demux`), joining a
room (:mod:`.join`), punching (:mod:`.punch`), the connection
(:mod:`.connection`), forwarding (:mod:`.forward`), the ``connect()`` API
(:mod:`.api`), the ``twistd natclient`` service (:mod:`.service`,
:mod:`.tap`), and the NAT prober (:mod:`.probe`)."""
