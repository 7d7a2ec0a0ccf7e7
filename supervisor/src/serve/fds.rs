//! STUB (owner B2): descriptors over Unix sockets (SCM_RIGHTS) and the peer's identity.
