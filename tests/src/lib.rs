//! Helpers shared by the end-to-end tests: locating the built binary, temp files, test namespaces.
