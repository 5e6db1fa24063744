// Package testenv is the harness for portfw's real-traffic tests: it creates
// network namespaces joined by veth pairs, runs TCP and UDP servers and
// clients as given uids inside them, and asserts whether traffic was
// delivered or blocked.
//
// Everything that enters a namespace or changes credentials happens in child
// processes (ip, nft, nsenter and the peer program in testenv/peer), never on
// a thread of the test binary, so a test can never leave a Go thread in a
// foreign namespace or with dropped privileges.
//
// All helpers call RequireNetNS first: without root and network namespaces
// the tests skip, unless PORTFW_REQUIRE_NETNS=1, where they fail. Every
// namespace and process is removed with t.Cleanup, also when a test fails
// midway. Traffic goes only to addresses inside namespaces a test created
// (documentation prefixes 192.0.2.0/24 and 2001:db8::/64).
package testenv
