//! STUB (owner B2): `tollgate run --connect SOCKET`, the caller's side of the node service.
