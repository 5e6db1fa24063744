package policy

import (
	"os"
	"strings"
	"testing"
)

// docs/policy.md is also the portfw-policy(5) man page: every key the
// parser accepts is documented there.
func TestEveryKeyIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	for section, keys := range map[string][]string{"": topKeys, "settings.": settingsKeys, "log.": logKeys,
		"marks.": marksKeys, "reservation.": reservationKeys, "owner.": ownerKeys} {
		for _, k := range keys {
			if !strings.Contains(string(doc), k+":") && !strings.Contains(string(doc), "`"+k+"`") && !strings.Contains(string(doc), "`owner."+k+"`") {
				t.Errorf("%s%s is not documented in docs/policy.md", section, k)
			}
		}
	}
}
