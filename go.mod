module github.com/portfw/portfw

go 1.26.8

require (
	github.com/cilium/ebpf v0.22.0
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/cpuguy83/go-md2man/v2 v2.0.7
	github.com/fsnotify/fsnotify v1.10.1
	github.com/godbus/dbus/v5 v5.2.4
	github.com/google/go-cmp v0.7.0
	github.com/google/nftables v0.3.1-0.20251119083706-1db35da82052
	github.com/mdlayher/netlink v1.8.1-0.20251028132421-dcc6cab9a6eb
	github.com/prometheus/client_golang v1.25.0
	github.com/prometheus/client_model v0.6.3
	github.com/prometheus/common v0.72.0
	golang.org/x/net v0.59.0
	golang.org/x/sys v0.48.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/mdlayher/socket v0.5.1 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/russross/blackfriday/v2 v2.1.0 // indirect
	golang.org/x/sync v0.22.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

// google/nftables does not decode `socket` expressions when it reads rules
// back (exprFromName has no case for them), so rules matching
// `socket cgroupv2 level N` (owners that are units and cgroups) would read
// back without their key. third_party/nftables is the pinned version with
// that one case added, and a byte-identical, faster encoding of set
// elements (a 10k table's elements queued in 21 ms, not 62), and sets read
// back say whether they carry a counter (the count sets), and a Conn's
// queued commands can be moved to another (a transaction is queued while
// the bind guard goes in, then sent); see its README.
replace github.com/google/nftables => ./third_party/nftables
