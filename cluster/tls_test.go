package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// testTLS makes a CA and one member certificate (server and client auth,
// for 127.0.0.1).
func testTLS(t *testing.T) (srv, cli *tls.Config) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "member"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	cli = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}
	return srv, cli
}

// TestMutualTLS: members with certificates from the cluster CA form a
// cluster and replicate over TLS; a client with the secret but without a
// certificate is refused.
func TestMutualTLS(t *testing.T) {
	srv, cli := testTLS(t)
	tc := newTestCluster(t, 3, func(c *Config) { c.ServerTLS, c.ClientTLS = srv, cli })
	tc.waitAlive(0, "n1", "n2", "n3")
	ctx := context.Background()
	tc.stores[0].put("tls", randPages(5, 3, 5000), []uint64{1, 1, 1}, "x")
	s, err := tc.nodes[0].Claim(ctx, "tls", 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := tc.nodes[0].Persist(ctx, SessionInfo{Name: "tls"}, s.Epoch); err != nil || len(res.Replicas) != 2 {
		t.Fatalf("persist over TLS: %+v %v", res, err)
	}
	noCert := newPeerClient(&dialer{id: "n9", secret: testSecret, tls: &tls.Config{RootCAs: cli.RootCAs, MinVersion: tls.VersionTLS13}})
	var pr pingReply
	if _, err := noCert.call(ctx, tc.cfgs[0].PeerAddr, popPing, struct{}{}, &pr); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	plain := newPeerClient(&dialer{id: "n9", secret: testSecret})
	if _, err := plain.call(ctx, tc.cfgs[0].PeerAddr, popPing, struct{}{}, &pr); err == nil {
		t.Fatal("a plain TCP client was served by a TLS port")
	}
}
