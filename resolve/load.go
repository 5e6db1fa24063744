package resolve

import (
	"fmt"
	"io"
	"os"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
)

// Read reads a policy file, refusing one over policy.MaxSize before reading
// it: a policy is input, and a huge one must not cost the daemon its memory.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > policy.MaxSize {
		return nil, tooLarge(path, fi.Size())
	}
	data, err := io.ReadAll(io.LimitReader(f, policy.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	if len(data) > policy.MaxSize {
		return nil, tooLarge(path, int64(len(data)))
	}
	return data, nil
}

func tooLarge(path string, size int64) error {
	var es policy.Errors
	es.Add(model.Pos{File: path, Line: 1, Col: 1}, "",
		fmt.Sprintf("the policy is %d bytes, over the %d-byte (16 MiB) limit", size, policy.MaxSize))
	return es.Err()
}

// Load reads, parses and resolves the policy file at path. The Policy is
// returned whenever parsing succeeded, even if resolving failed, so that
// `portfw check` can still summarise it.
func Load(path string, r Resolver) (*model.Resolved, *policy.Policy, error) {
	data, err := Read(path)
	if err != nil {
		return nil, nil, err
	}
	p, err := policy.Parse(path, data)
	if err != nil {
		return nil, nil, err
	}
	res, err := Resolve(p, r)
	if err != nil {
		return nil, p, err
	}
	if s, ok := r.(SubIDs); ok {
		res.Warnings = append(res.Warnings, SubIDWarnings(res, s)...)
	}
	return res, p, nil
}
