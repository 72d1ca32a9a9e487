"""Key derivation from the shared secret (:mod:`natsalon.crypto.secret`) and
the AEAD payload frames (:mod:`natsalon.crypto.aead`)."""
