# tollgate's built-in decision: may this request leave the sandbox?
#
# Rust computes the facts (URL normalisation, host/port/path matching, L7 pattern matching,
# address classification) because parsing is where bypasses hide; this module turns those
# facts into one decision. Input and output are documented in docs/policy.md.
#
# The allow is one conjunction of positive checks, so a missing or malformed fact can only
# ever refuse. When it does not hold, the chain below names the first reason, in an order
# that reads as the security model; if no reason matches, the refusal is `policy_error`.
package tollgate

import rego.v1

read_only_methods := {"GET", "HEAD", "OPTIONS"}

read_write_methods := read_only_methods | {"POST", "PUT", "PATCH"}

entry := data.policy.entries[input.match.entry]

# --- the checks an allow needs -------------------------------------------------------------

destination_listed if input.match.entry != null

destination_listed if {
	input.match.entry == null
	data.policy.allow_all == true
}

method_ok if input.request.connect == true

method_ok if {
	input.match.entry == null
	data.policy.allow_all == true
}

method_ok if entry.access == "full"

method_ok if {
	entry.access == "read-write"
	input.request.method in read_write_methods
}

method_ok if {
	entry.access == "read-only"
	input.request.method in read_only_methods
}

l7_ok if input.request.connect == true

l7_ok if {
	input.match.entry == null
	data.policy.allow_all == true
}

l7_ok if {
	entry.has_rules == false
	input.match.l7_deny == null
}

l7_ok if {
	entry.has_rules == true
	input.match.l7_deny == null
	input.match.l7_allow != null
}

private_addresses_ok if data.policy.block_private_ips == false

private_addresses_ok if input.destination.first_uncovered_internal == null

rule_allowing := input.match.rule if input.match.entry != null

else := "network.allow_all"

# --- the decision ---------------------------------------------------------------------------

refuse(reason, rule) := {"allow": false, "reason": reason, "rule": rule}

refuse_address(reason, i) := {
	"allow": false,
	"reason": reason,
	"rule": input.match.rule,
	"address": input.destination.addresses[i],
}

decision := {"allow": true, "reason": "allowed", "rule": rule_allowing} if {
	data.policy.network == true
	destination_listed
	method_ok
	input.match.encoded_slash_refused == false
	input.match.path_parameter_refused == false
	input.match.encoded_percent_refused == false
	input.match.trailing_dot_refused == false
	l7_ok
	input.destination.resolved == true
	count(input.destination.addresses) > 0
	input.destination.first_blocked == null
	private_addresses_ok
} else := refuse("network_disabled", null) if {
	not data.policy.network
} else := refuse("host_not_allowed", null) if {
	not destination_listed
	input.match.near_miss == null
} else := refuse(sprintf("%s_not_allowed", [input.match.near_miss]), input.match.near_miss_rule) if {
	not destination_listed
} else := refuse("method_not_allowed", input.match.rule) if {
	not method_ok
} else := refuse("encoded_slash", input.match.rule) if {
	input.match.encoded_slash_refused == true
} else := refuse("path_parameter", input.match.rule) if {
	input.match.path_parameter_refused == true
} else := refuse("encoded_percent", input.match.rule) if {
	input.match.encoded_percent_refused == true
} else := refuse("trailing_dot", input.match.rule) if {
	input.match.trailing_dot_refused == true
} else := refuse("l7_denied", input.match.l7_deny) if {
	input.match.l7_deny != null
} else := refuse("l7_not_matched", input.match.rule) if {
	not l7_ok
} else := refuse("not_resolved", input.match.rule) if {
	# The caller decides before resolving, so refused names are never looked up.
	not input.destination.resolved
} else := refuse("cannot_resolve", input.match.rule) if {
	count(input.destination.addresses) == 0
} else := refuse_address("host_address", input.destination.first_blocked) if {
	# The first blocked address is one of the node's own (not in the always-blocked tables).
	input.destination.host_address[input.destination.first_blocked] == true
} else := refuse_address("address_blocked", input.destination.first_blocked) if {
	input.destination.first_blocked != null
} else := refuse_address("private_address", input.destination.first_uncovered_internal) if {
	not private_addresses_ok
} else := refuse("policy_error", null)
