// Package docs holds the documentation that ships inside the binary: the
// policy reference is also the portfw-policy(5) man page (`portfw man
// policy`), so the two cannot differ.
package docs

import _ "embed"

// Policy is policy.md, the reference of the policy file.
//
//go:embed policy.md
var Policy string
