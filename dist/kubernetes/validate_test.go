// Package kubernetes checks the shipped manifest against the Kubernetes
// API types (k8s.io/api): a misspelt or misplaced field fails to decode,
// as `kubectl apply --validate=strict` would refuse it; and what refers to
// something (mounts to volumes, the probe to a port) finds it.
package kubernetes

import (
	"bytes"
	"os"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func documents(t *testing.T) [][]byte {
	data, err := os.ReadFile("daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]byte
	for _, d := range bytes.Split(data, []byte("\n---\n")) {
		if len(bytes.TrimSpace(d)) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

func TestManifestDecodesStrictly(t *testing.T) {
	docs := documents(t)
	if len(docs) != 2 {
		t.Fatalf("%d documents, want the ConfigMap and the DaemonSet", len(docs))
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(docs[0], &cm); err != nil {
		t.Fatalf("ConfigMap: %v", err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(docs[1], &ds); err != nil {
		t.Fatalf("DaemonSet: %v", err)
	}
	if cm.Kind != "ConfigMap" || cm.APIVersion != "v1" || ds.Kind != "DaemonSet" || ds.APIVersion != "apps/v1" {
		t.Fatalf("kinds: %s %s, %s %s", cm.APIVersion, cm.Kind, ds.APIVersion, ds.Kind)
	}
	if _, ok := cm.Data["policy.yaml"]; !ok {
		t.Error("the ConfigMap has no policy.yaml")
	}

	spec := ds.Spec.Template.Spec
	if ds.Spec.Selector == nil || ds.Spec.Selector.MatchLabels["app"] != ds.Spec.Template.Labels["app"] {
		t.Error("the selector does not match the template's labels")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("mount %s: no volume %q", m.MountPath, m.Name)
		}
	}
	if v := volumes["policy"]; v.ConfigMap == nil || v.ConfigMap.Name != cm.Name {
		t.Errorf("the policy volume is not the ConfigMap %q", cm.Name)
	}
	var ports []string
	for _, p := range c.Ports {
		ports = append(ports, p.Name)
		if spec.HostNetwork && p.HostPort != p.ContainerPort {
			t.Errorf("port %s: with hostNetwork, hostPort must equal containerPort", p.Name)
		}
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || !slices.Contains(ports, c.ReadinessProbe.HTTPGet.Port.StrVal) {
		t.Error("the readiness probe does not name a port of the container")
	}
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
	}
	if !env["NODE_IP"] {
		t.Error("args use $(NODE_IP), which env does not define")
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || *c.SecurityContext.Privileged ||
		c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Error("the container is privileged or has a writable root")
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("no memory request or limit")
	}
	if c.Resources.Requests.Memory().Cmp(*c.Resources.Limits.Memory()) > 0 {
		t.Error("the memory request is above the limit")
	}
}
