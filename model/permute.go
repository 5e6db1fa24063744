package model

// Permute puts s in the order idx gives: s[k] becomes what s[idx[k]] was.
// Each element moves once, without a second slice of them (at 10k
// reservations or 80k set elements, a copy is megabytes to zero and then
// collect). idx must be a permutation of s's indexes; it is used up.
func Permute[T any](s []T, idx []int32) {
	for k := range idx {
		if idx[k] < 0 || int(idx[k]) == k {
			continue
		}
		tmp := s[k]
		j := k
		for {
			from := int(idx[j])
			idx[j] = -1
			if from == k {
				s[j] = tmp
				break
			}
			s[j] = s[from]
			j = from
		}
	}
}
