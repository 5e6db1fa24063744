package bindguard

import (
	"fmt"

	"github.com/portfw/portfw/model"
)

// Decide turns settings.bind_guard into whether to run the guard. supported
// is Supported outside tests. With auto on a host that cannot run it, on is
// false and note says why and what is left; with on, that is an error,
// returned before anything touched the kernel.
func Decide(mode model.BindGuardMode, supported func() error) (on bool, note string, err error) {
	switch mode {
	case model.BindGuardOff:
		return false, "", nil
	case model.BindGuardOn:
		if err := supported(); err != nil {
			return false, "", fmt.Errorf("bind_guard is on but %w", err)
		}
		return true, "", nil
	case model.BindGuardAuto:
		if err := supported(); err != nil {
			return false, fmt.Sprintf("bind guard off: %v; the nftables rules alone enforce the policy "+
				"(a squatter can still bind a reserved port: nothing it sends leaves, but on UDP a silent one reads what clients send it)", err), nil
		}
		return true, "", nil
	}
	return false, "", fmt.Errorf("bind_guard: unknown mode %v", mode)
}
