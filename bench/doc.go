// Package bench holds portfw's benchmarks; `make bench` (bench/run.sh, as
// root) runs them all and writes docs/performance.md.
//
//   - gen: the synthetic policies every benchmark uses.
//   - cmd/pfwbench: apply phases, element deltas, daemon reloads, and the
//     report writer.
//   - compile_test.go: Go benchmarks of the pure steps (parse and resolve,
//     compile, text form, diff, element delta) at 1k and 10k reservations.
//   - run.sh: the datapath (sockperf ping-pong through network namespaces,
//     interleaved variants), apply wall times against `nft -f`, and the rest.
package bench
