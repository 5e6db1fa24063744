// Package policy reads portfw's YAML policy ("port P belongs to user U")
// and turns it into a Resolved value for the compiler.
//
// It works in two steps so that only one of them touches the host:
// Parse is pure and checks everything that can be checked from the text
// alone; Resolve asks a Resolver for user and group ids and then checks
// what needs ids, such as two reservations claiming the same port. Both
// report every problem they find, each as file:line:col: field: message,
// because an admin fixing a policy should not have to run portfw once per
// mistake.
package policy
