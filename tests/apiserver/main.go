// k8s-testenv: a genuine kube-apiserver plus an embedded etcd in one process,
// on 127.0.0.1 only, for kproxy's end-to-end tests.
//
// Environment:
//
//	TESTENV_DIR   directory to write into (created if missing; should be empty). Required.
//	TESTENV_PORT  secure port of the apiserver (default: a free port).
//	TESTENV_VERBOSE=1  copy the complete log to stderr (default: errors only).
//	TESTENV_STDIN_EOF_EXIT=1  stop (as on SIGTERM) when stdin reaches EOF, so
//	              that a test process that dies without killing us (its end of
//	              a stdin pipe closes) does not leave the server running.
//
// Extra command-line arguments are passed to kube-apiserver after the built-in
// ones (later flags win), e.g. `k8s-testenv -v=4`.
//
// Once /readyz is ok and the bootstrap objects exist, it prints exactly one
// line to stdout: `ready https://127.0.0.1:PORT`. The complete apiserver and
// etcd log goes to TESTENV_DIR/testenv.log; stderr gets only errors (minus a
// few known-harmless start-up messages) unless TESTENV_VERBOSE=1.
// SIGTERM/SIGINT stop it (a second signal exits immediately).
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	_ "time/tzdata" // as in cmd/kube-apiserver: timeZone support in CronJob

	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/storage/wal"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // as in cmd/kube-apiserver
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // as in cmd/kube-apiserver
	_ "k8s.io/component-base/metrics/prometheus/version"  // as in cmd/kube-apiserver
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

var stopping atomic.Bool

const (
	readyTimeout     = 180 * time.Second
	bootstrapTimeout = 60 * time.Second
)

func main() {
	dir := os.Getenv("TESTENV_DIR")
	if dir == "" {
		fatalf("TESTENV_DIR must be set (an empty directory to write into)")
	}
	dir, err := filepath.Abs(dir)
	check(err, "TESTENV_DIR")
	check(os.MkdirAll(dir, 0o700), "create TESTENV_DIR")
	p := func(name string) string { return filepath.Join(dir, name) }
	setupLogs(p("testenv.log"), os.Getenv("TESTENV_VERBOSE") == "1")

	port := os.Getenv("TESTENV_PORT")
	if port == "" {
		port = freePort()
	} else if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		fatalf("TESTENV_PORT=%q is not a port number", port)
	}
	server := "https://127.0.0.1:" + port

	writePKI(p)

	etcd, etcdURL := startEtcd(p("etcd"))

	// NewAPIServerCommand installs the SIGTERM/SIGINT handler (a context that
	// the server's graceful shutdown follows), so create it only now: a signal
	// during etcd start-up above simply terminates the process.
	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(append([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + port,
		"--tls-cert-file=" + p("apiserver.crt"),
		"--tls-private-key-file=" + p("apiserver.key"),
		"--client-ca-file=" + p("client-ca.crt"),
		"--token-auth-file=" + p("tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p("sa.key"),
		"--service-account-signing-key-file=" + p("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
		"-v=0",
	}, os.Args[1:]...))

	if os.Getenv("TESTENV_STDIN_EOF_EXIT") == "1" {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			syscall.Kill(os.Getpid(), syscall.SIGTERM) // graceful stop via the apiserver's handler
		}()
	}

	go func() {
		if err := bootstrap(p, server); err != nil {
			fatalf("bootstrap: %v", err)
		}
		fmt.Println("ready", server)
	}()

	code := cli.Run(cmd) // blocks until the signal context is cancelled and the server has shut down
	syncLogs()           // everything logged so far is filtered as usual
	stopping.Store(true)
	etcd.Close()
	flushLogs()
	os.Exit(code)
}

// startEtcd starts a single-member embedded etcd on free loopback ports,
// retrying with new ports if a chosen port was taken in the meantime.
func startEtcd(dataDir string) (*embed.Etcd, string) {
	// etcd preallocates WAL segments (the live one plus a spare): 2 x 64 MB by
	// default, 2 x 8 MB here. Plenty for a test server; etcd's own WAL tests
	// change this variable too.
	wal.SegmentSizeBytes = 8 * 1000 * 1000
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		cu := url.URL{Scheme: "http", Host: "127.0.0.1:" + freePort()}
		pu := url.URL{Scheme: "http", Host: "127.0.0.1:" + freePort()}
		cfg := embed.NewConfig() // as k8s.io/apiserver/pkg/storage/etcd3/testserver
		cfg.Name = "testenv"
		cfg.Dir = dataDir
		cfg.UnsafeNoFsync = true // throw-away single member
		cfg.LogLevel = "error"
		cfg.LogOutputs = []string{"stderr"} // os.Stderr, i.e. the log pipe (see setupLogs)
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		os.RemoveAll(dataDir)
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			go func() {
				if err, ok := <-e.Err(); ok && err != nil && !stopping.Load() {
					fatalf("etcd: %v", err)
				}
			}()
			return e, cu.String()
		case <-time.After(60 * time.Second):
			e.Server.Stop()
			fatalf("etcd did not become ready within 60s")
		}
	}
	fatalf("start etcd: %v", lastErr)
	return nil, ""
}

// writePKI writes: ca.crt/ca.key (serving CA), apiserver.crt/.key (serving
// cert, SAN 127.0.0.1 and localhost), client-ca.crt/.key, admin.crt/.key
// (CN admin, O system:masters), alice.crt/.key (CN alice, O dev), sa.key
// (service-account signing key) and tokens.csv.
func writePKI(p func(string) string) {
	ca, caKey := issue(p("ca"), &x509.Certificate{
		Subject: pkix.Name{CommonName: "k8s-testenv serving CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}, nil, nil)
	issue(p("apiserver"), &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)

	clientCA, clientCAKey := issue(p("client-ca"), &x509.Certificate{
		Subject: pkix.Name{CommonName: "k8s-testenv client CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}, nil, nil)
	for _, u := range []struct{ name, group string }{{"admin", "system:masters"}, {"alice", "dev"}} {
		issue(p(u.name), &x509.Certificate{
			Subject:     pkix.Name{CommonName: u.name, Organization: []string{u.group}},
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, clientCA, clientCAKey)
	}

	writeKey(p("sa.key"), newKey())
	// token,user,uid[,"group1,group2"]
	tokens := "admin-token,admin,admin-uid,\"system:masters\"\n" +
		"alice-token,alice,alice-uid,\"dev\"\n" +
		"bob-token,bob,bob-uid\n"
	check(os.WriteFile(p("tokens.csv"), []byte(tokens), 0o600), "tokens.csv")
}

// bootstrap waits for /readyz, creates the test objects and writes the kubeconfigs.
func bootstrap(p func(string) string, server string) error {
	admin := &rest.Config{
		Host:    server,
		Timeout: 10 * time.Second,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile: p("ca.crt"), CertFile: p("admin.crt"), KeyFile: p("admin.key"),
		},
		UserAgent: "k8s-testenv",
	}
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return err
	}
	ctx := context.Background()

	// /readyz is "ok" only after every post-start hook, incl. rbac/bootstrap-roles.
	deadline := time.Now().Add(readyTimeout)
	for {
		b, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(b) == "ok" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("/readyz not ok after %v: %v %s", readyTimeout, err, b)
		}
		time.Sleep(200 * time.Millisecond)
	}

	rbac := rbacv1.GroupName
	objs := []struct {
		what   string
		create func() error
	}{
		{"namespace team-a", func() error {
			_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
				ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}, metav1.CreateOptions{})
			return err
		}},
		{"role team-a/cm-reader", func() error {
			_, err := cs.RbacV1().Roles("team-a").Create(ctx, &rbacv1.Role{
				ObjectMeta: metav1.ObjectMeta{Name: "cm-reader"},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"},
					Verbs: []string{"get", "list", "watch"}}},
			}, metav1.CreateOptions{})
			return err
		}},
		{"rolebinding team-a/dev-cm-reader", func() error {
			_, err := cs.RbacV1().RoleBindings("team-a").Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "dev-cm-reader"},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbac, Kind: "Role", Name: "cm-reader"},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbac, Name: "dev"}},
			}, metav1.CreateOptions{})
			return err
		}},
		// The "default" namespace is created asynchronously by the apiserver; retried below.
		{"serviceaccount default/kproxy-sa", func() error {
			_, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{
				ObjectMeta: metav1.ObjectMeta{Name: "kproxy-sa"}}, metav1.CreateOptions{})
			return err
		}},
		{"clusterrolebinding kproxy-sa-view", func() error {
			_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "kproxy-sa-view"},
				// Not "view": that ClusterRole is aggregated, and the aggregation controller runs in
				// kube-controller-manager, so here it has no rules. system:aggregate-to-view holds
				// the actual rules of "view" (get/list/watch on most namespaced resources).
				RoleRef:  rbacv1.RoleRef{APIGroup: rbac, Kind: "ClusterRole", Name: "system:aggregate-to-view"},
				Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "default", Name: "kproxy-sa"}},
			}, metav1.CreateOptions{})
			return err
		}},
	}
	for _, o := range objs {
		deadline := time.Now().Add(bootstrapTimeout)
		for {
			err := o.create()
			if err == nil || apierrors.IsAlreadyExists(err) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("create %s: %w", o.what, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	ca := read(p("ca.crt"))
	kubeconfig := func(file string, auth *clientcmdapi.AuthInfo, user string) error {
		c := clientcmdapi.NewConfig()
		c.Clusters["testenv"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
		c.AuthInfos[user] = auth
		c.Contexts["testenv"] = &clientcmdapi.Context{Cluster: "testenv", AuthInfo: user, Namespace: "default"}
		c.CurrentContext = "testenv"
		return clientcmd.WriteToFile(*c, p(file))
	}
	for _, k := range []struct {
		file, user string
		auth       *clientcmdapi.AuthInfo
	}{
		{"admin.kubeconfig", "admin", &clientcmdapi.AuthInfo{ClientCertificateData: read(p("admin.crt")), ClientKeyData: read(p("admin.key"))}},
		{"alice.kubeconfig", "alice", &clientcmdapi.AuthInfo{ClientCertificateData: read(p("alice.crt")), ClientKeyData: read(p("alice.key"))}},
		{"token.kubeconfig", "admin-token", &clientcmdapi.AuthInfo{Token: "admin-token"}},
		{"bob.kubeconfig", "bob", &clientcmdapi.AuthInfo{Token: "bob-token"}},
	} {
		if err := kubeconfig(k.file, k.auth, k.user); err != nil {
			return fmt.Errorf("write %s: %w", k.file, err)
		}
	}
	return nil
}

var serial int64

func newKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(err, "generate key")
	return k
}

func writePEM(file, typ string, der []byte) {
	check(os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600), file)
}

func writeKey(file string, k *ecdsa.PrivateKey) {
	der, err := x509.MarshalECPrivateKey(k)
	check(err, "marshal key")
	writePEM(file, "EC PRIVATE KEY", der)
}

// issue creates base.crt and base.key; self-signed when parent is nil.
func issue(base string, t, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	k := newKey()
	serial++
	t.SerialNumber = big.NewInt(time.Now().UnixNano() + serial)
	t.NotBefore, t.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(7*24*time.Hour)
	if parent == nil {
		parent, parentKey = t, k
	}
	der, err := x509.CreateCertificate(rand.Reader, t, parent, &k.PublicKey, parentKey)
	check(err, "create certificate "+base)
	writePEM(base+".crt", "CERTIFICATE", der)
	writeKey(base+".key", k)
	c, err := x509.ParseCertificate(der)
	check(err, "parse certificate "+base)
	return c, k
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err, "find a free port")
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func read(file string) []byte {
	b, err := os.ReadFile(file)
	check(err, "read "+file)
	return b
}

// Logging. klog (apiserver) and zap (etcd) write to os.Stderr, which setupLogs
// replaces with a pipe: every line goes to the log file; klog lines go on to
// the real stderr only if they are errors (E/F), other lines (etcd JSON,
// cobra errors) unless the apiserver has already stopped (etcd complains
// about closed listeners then). Indented lines follow the line they continue. Go runtime
// panics write to file descriptor 2 directly and are never filtered.
var (
	realStderr = os.Stderr
	logPipe    *os.File
	logDone    = make(chan struct{})
	logSynced  = make(chan struct{}, 1)
)

const syncMarker = "\x00k8s-testenv-sync\n"

// Logged at E level on every start, harmless here (no controller-manager, no
// manifest-based admission config, fresh etcd); still in the log file.
var benign = []string{
	"The manifest file is empty, ignoring",
	"Failed to ensure lease exists, will retry",
	"Found stale data, removed previous endpoints on kubernetes service",
	`namespaces \"kube-system\" not found`,
	"is not allocated; repairing",
}

func setupLogs(file string, verbose bool) {
	f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	check(err, "open log file")
	r, w, err := os.Pipe()
	check(err, "create log pipe")
	os.Stderr, logPipe = w, w
	go func() {
		defer close(logDone)
		br := bufio.NewReaderSize(r, 64<<10)
		forward := true
		for {
			line, err := br.ReadString('\n')
			if line == syncMarker {
				select {
				case logSynced <- struct{}{}:
				default:
				}
				continue
			}
			if line != "" {
				f.WriteString(line)
				switch {
				case verbose:
					forward = true
				case isKlogHeader(line):
					forward = line[0] == 'E' || line[0] == 'F'
					for _, b := range benign {
						if strings.Contains(line, b) {
							forward = false
						}
					}
				case line[0] == ' ' || line[0] == '\t':
					// continuation of the previous entry
				default:
					forward = !stopping.Load()
				}
				if forward {
					realStderr.WriteString(line)
				}
			}
			if err != nil {
				f.Close()
				return
			}
		}
	}()
}

// isKlogHeader matches "Lmmdd hh:mm:ss.uuuuuu ..." with L one of I, W, E, F.
func isKlogHeader(line string) bool {
	if len(line) < 6 || !strings.ContainsRune("IWEF", rune(line[0])) || line[5] != ' ' {
		return false
	}
	for _, c := range line[1:5] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// syncLogs waits until the log pipe has processed everything written so far.
func syncLogs() {
	logPipe.WriteString(syncMarker)
	select {
	case <-logSynced:
	case <-time.After(2 * time.Second):
	}
}

// flushLogs drains the log pipe before the process exits.
func flushLogs() {
	if logPipe == nil {
		return
	}
	logPipe.Close()
	select {
	case <-logDone:
	case <-time.After(2 * time.Second):
	}
}

func check(err error, what string) {
	if err != nil {
		fatalf("%s: %v", what, err)
	}
}

func fatalf(format string, args ...any) {
	msg := fmt.Sprintf("k8s-testenv: "+format+"\n", args...)
	if logPipe != nil {
		logPipe.WriteString(msg) // into the log file as well
		flushLogs()
	} else {
		realStderr.WriteString(msg)
	}
	os.Exit(1)
}
