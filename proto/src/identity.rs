//! The node identity carried in a client certificate: a URI SAN of the form
//! `spiffe://moltops/node/<uuid>`. Both the control plane (which writes it when signing) and the
//! agent and tests (which read it) use these two functions, so the format lives in one place.

use uuid::Uuid;

/// Prefix of the URI SAN that names a node.
pub const NODE_URI_PREFIX: &str = "spiffe://moltops/node/";

/// The URI SAN for a node id.
pub fn node_uri(node_id: Uuid) -> String {
    format!("{NODE_URI_PREFIX}{node_id}")
}

/// Parses a node id out of a URI SAN; `None` when the URI is not a moltops node identity.
pub fn parse_node_uri(uri: &str) -> Option<Uuid> {
    let rest = uri.strip_prefix(NODE_URI_PREFIX)?;
    Uuid::parse_str(rest).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_uris() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(parse_node_uri(&node_uri(id)), Some(id));
        assert_eq!(parse_node_uri("spiffe://other/node/0123"), None);
        assert_eq!(parse_node_uri("spiffe://moltops/node/not-a-uuid"), None);
        assert_eq!(parse_node_uri(&format!("{}x", node_uri(id))), None);
    }
}
