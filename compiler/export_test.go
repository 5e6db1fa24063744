package compiler

import "github.com/portfw/portfw/model"

// UsedSets and UsedSetsByElements expose the two ways of telling which sets
// a policy uses, for TestSetsOfAgreesWithElements.
func UsedSets(r *model.Resolved) [numSets]bool { return kinds(r).sets }

func UsedSetsByElements(r *model.Resolved) [numSets]bool {
	var sets [numSets]bool
	for _, res := range r.All() {
		eachElement(res, r.Settings.AllowRoot, func(set int, _ Element) { sets[set] = true })
	}
	return sets
}
