# tollgate's built-in decision: may this request leave the sandbox?
#
# Rust computes the facts (URL normalisation, host/port/path matching, L7 pattern matching,
# address classification) because parsing is where bypasses hide; this module turns those
# facts into one decision with a reason, in a fixed order that reads as the security model.
# Input and output are documented in docs/policy.md.
package tollgate

import rego.v1

read_only_methods := {"GET", "HEAD", "OPTIONS"}

read_write_methods := read_only_methods | {"POST", "PUT", "PATCH"}

method_allowed("full", _) if true

method_allowed("read-write", method) if method in read_write_methods

method_allowed("read-only", method) if method in read_only_methods

entry := data.policy.entries[input.match.entry]

refuse(reason, rule) := {"allow": false, "reason": reason, "rule": rule}

refuse_address(reason, i) := {
	"allow": false,
	"reason": reason,
	"rule": input.match.rule,
	"address": input.destination.addresses[i],
}

decision := refuse("network_disabled", null) if {
	not data.policy.network
} else := refuse("host_not_allowed", null) if {
	input.match.entry == null
	not data.policy.allow_all
	input.match.near_miss == null
} else := refuse(sprintf("%s_not_allowed", [input.match.near_miss]), input.match.near_miss_rule) if {
	input.match.entry == null
	not data.policy.allow_all
} else := refuse("method_not_allowed", input.match.rule) if {
	not input.request.connect
	input.match.entry != null
	not method_allowed(entry.access, input.request.method)
} else := refuse("encoded_slash", input.match.rule) if {
	input.match.encoded_slash_refused
} else := refuse("l7_denied", input.match.l7_deny) if {
	input.match.l7_deny != null
} else := refuse("l7_not_matched", input.match.rule) if {
	not input.request.connect
	input.match.entry != null
	entry.has_rules
	input.match.l7_allow == null
} else := refuse("not_resolved", input.match.rule) if {
	# Fail closed: a caller that skipped resolution never gets an allow.
	not input.destination.resolved
} else := refuse("cannot_resolve", input.match.rule) if {
	count(input.destination.addresses) == 0
} else := refuse_address("address_blocked", input.destination.first_blocked) if {
	input.destination.first_blocked != null
} else := refuse_address("private_address", input.destination.first_uncovered_internal) if {
	data.policy.block_private_ips
	input.destination.first_uncovered_internal != null
} else := {"allow": true, "reason": "allowed", "rule": rule_allowing} if {
	# Fail closed: the allow is reached only when every fact it rests on is present and
	# says yes. A missing fact makes every refusal above undefined; it must not allow.
	data.policy.network == true
	input.destination.resolved == true
	count(input.destination.addresses) > 0
	input.destination.first_blocked == null
	private_addresses_ok
	input.match.l7_deny == null
	input.match.encoded_slash_refused == false
} else := refuse("policy_error", null)

private_addresses_ok if not data.policy.block_private_ips

private_addresses_ok if input.destination.first_uncovered_internal == null

rule_allowing := input.match.rule if input.match.entry != null

else := "network.allow_all"
