//! IP address classification (owned by the IP helper; stub until it lands).
