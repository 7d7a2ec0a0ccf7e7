//! URL normalisation and matching (owned by the URL helper; stub until it lands).
