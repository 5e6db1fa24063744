package bindguard

import (
	"fmt"

	"github.com/portfw/portfw/policy"
)

// Decide turns settings.bind_guard into whether to run the guard. supported
// is Supported outside tests. With auto on a host that cannot run it, on is
// false and note says why and that nftables alone enforces the policy; with
// on, that is an error, returned before anything touched the kernel.
func Decide(mode policy.BindGuardMode, supported func() error) (on bool, note string, err error) {
	switch mode {
	case policy.BindGuardOff:
		return false, "", nil
	case policy.BindGuardOn:
		if err := supported(); err != nil {
			return false, "", fmt.Errorf("bind_guard: on: %w", err)
		}
		return true, "", nil
	case policy.BindGuardAuto:
		if err := supported(); err != nil {
			return false, fmt.Sprintf("bind_guard: auto: %v; the nftables rules alone enforce the policy "+
				"(squatters can still bind reserved ports, and get no traffic)", err), nil
		}
		return true, "", nil
	}
	return false, "", fmt.Errorf("bind_guard: unknown mode %v", mode)
}
