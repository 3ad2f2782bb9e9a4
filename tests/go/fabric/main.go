// Replays Hyperledger Fabric's BCCSP PKCS#11 sequence (fabric-lib-go bccsp/pkcs11) with
// github.com/miekg/pkcs11, the binding Fabric uses, against the module given as argument:
// initialise, find the token by label, open an RW session, log in (accepting
// CKR_USER_ALREADY_LOGGED_IN), log in with an empty PIN on a second pooled session (printing
// the answer), generate an EC P-256 key pair with Fabric's templates, set
// CKA_ID/CKA_LABEL to the SKI, find the key by CKA_ID, read CKA_EC_POINT/CKA_EC_PARAMS,
// SignInit(CKM_ECDSA) + C_Sign, verify in software, copy with CKA_MODIFIABLE=false and destroy
// the original, then sign from 10 goroutines at once, each on a session of a pool.
//
// With FABRIC_LOOP_MS set, it then signs for that many milliseconds from 4 goroutines as a
// Fabric peer does (find the key by SKI, SignInit, C_Sign, on pooled sessions evicted only on
// a 0xB* error), printing "looping" when it starts and a summary line at the end (with the
// time of the last signing error, in milliseconds since the loop started).
//
// Usage: fabric MODULE LABEL PIN
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

var oidP256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}

func fail(format string, args ...interface{}) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func must(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func findSlot(ctx *pkcs11.Ctx, label string) uint {
	slots, err := ctx.GetSlotList(true)
	must(err, "C_GetSlotList")
	for _, s := range slots {
		info, err := ctx.GetTokenInfo(s)
		must(err, "C_GetTokenInfo")
		if strings.TrimRight(info.Label, " \x00") == label {
			return s
		}
	}
	fail("no token labelled %q", label)
	return 0
}

func login(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, pin string) {
	err := ctx.Login(s, pkcs11.CKU_USER, pin)
	if err != nil {
		if e, ok := err.(pkcs11.Error); !ok || e != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
			fail("C_Login: %v", err)
		}
	}
}

func publicKey(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, pub pkcs11.ObjectHandle) *ecdsa.PublicKey {
	attrs, err := ctx.GetAttributeValue(s, pub, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
	})
	must(err, "C_GetAttributeValue(EC_POINT, EC_PARAMS)")
	var params asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(attrs[1].Value, &params); err != nil || !params.Equal(oidP256) {
		fail("CKA_EC_PARAMS is not P-256: %x", attrs[1].Value)
	}
	var point []byte
	if _, err := asn1.Unmarshal(attrs[0].Value, &point); err != nil {
		fail("CKA_EC_POINT is not a DER octet string: %v", err)
	}
	x, y := elliptic.Unmarshal(elliptic.P256(), point)
	if x == nil {
		fail("CKA_EC_POINT is not a P-256 point")
	}
	return &ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y}
}

func sign(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, key pkcs11.ObjectHandle, digest []byte) []byte {
	must(ctx.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, key), "C_SignInit")
	sig, err := ctx.Sign(s, digest)
	must(err, "C_Sign")
	return sig
}

func verify(pub *ecdsa.PublicKey, digest, sig []byte) {
	if len(sig) != 64 {
		fail("signature of %d bytes", len(sig))
	}
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest, r, s) {
		fail("signature does not verify in software")
	}
}

func main() {
	if len(os.Args) != 4 {
		fail("usage: fabric MODULE LABEL PIN")
	}
	ctx := pkcs11.New(os.Args[1])
	if ctx == nil {
		fail("cannot load %s", os.Args[1])
	}
	must(ctx.Initialize(), "C_Initialize")
	defer ctx.Destroy()
	slot := findSlot(ctx, os.Args[2])
	session, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	must(err, "C_OpenSession")
	login(ctx, session, os.Args[3])

	// Fabric's BCCSP logs in on each new pooled session; with an empty PIN (a PIN-less
	// configuration, or a protected authentication path) miekg passes NULL and 0. The answer
	// is the vendor's, printed so that the caller can compare it with the vendor's directly.
	pooled, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	must(err, "C_OpenSession (pooled)")
	fmt.Printf("empty-PIN login on a pooled session, logged in: %v\n", ctx.Login(pooled, pkcs11.CKU_USER, ""))
	must(ctx.CloseSession(pooled), "C_CloseSession (pooled)")

	// Key generation with Fabric's templates (bccsp/pkcs11 generateECKey).
	ecParams, _ := asn1.Marshal(oidP256)
	tmpID := []byte("tmp-" + hex.EncodeToString([]byte(os.Args[2])))
	pubT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParams),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, tmpID),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, tmpID),
	}
	privT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ID, tmpID),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, tmpID),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
	}
	pub, priv, err := ctx.GenerateKeyPair(session,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
	must(err, "C_GenerateKeyPair")

	// The SKI becomes CKA_ID and CKA_LABEL of both keys.
	point, err := ctx.GetAttributeValue(session, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	must(err, "C_GetAttributeValue(EC_POINT)")
	ski := sha256.Sum256(point[0].Value)
	setT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ID, ski[:]),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, hex.EncodeToString(ski[:])),
	}
	must(ctx.SetAttributeValue(session, pub, setT), "C_SetAttributeValue(public)")
	must(ctx.SetAttributeValue(session, priv, setT), "C_SetAttributeValue(private)")

	// Key lookup as Fabric does it: class + CKA_ID, one object.
	find := func(class uint) pkcs11.ObjectHandle {
		must(ctx.FindObjectsInit(session, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_ID, ski[:]),
		}), "C_FindObjectsInit")
		objs, _, err := ctx.FindObjects(session, 1)
		must(err, "C_FindObjects")
		must(ctx.FindObjectsFinal(session), "C_FindObjectsFinal")
		if len(objs) != 1 {
			fail("found %d objects of class %d by CKA_ID", len(objs), class)
		}
		return objs[0]
	}
	privKey, pubKey := find(pkcs11.CKO_PRIVATE_KEY), find(pkcs11.CKO_PUBLIC_KEY)
	ecPub := publicKey(ctx, session, pubKey)

	digest := sha256.Sum256([]byte("endorsement"))
	verify(ecPub, digest[:], sign(ctx, session, privKey, digest[:]))

	// Fabric's immutable keys: copy with CKA_MODIFIABLE=false, destroy the original.
	copied, err := ctx.CopyObject(session, privKey, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false)})
	must(err, "C_CopyObject")
	must(ctx.DestroyObject(session, privKey), "C_DestroyObject")
	verify(ecPub, digest[:], sign(ctx, session, copied, digest[:]))

	// Ten goroutines, each taking sessions from a shared pool, as Fabric's session cache does.
	pool := make(chan pkcs11.SessionHandle, 10)
	for i := 0; i < 10; i++ {
		s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		must(err, "C_OpenSession(pool)")
		login(ctx, s, os.Args[3])
		pool <- s
	}
	var wg sync.WaitGroup
	for g := 0; g < 10; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				d := sha256.Sum256([]byte(fmt.Sprintf("tx %d/%d", g, i)))
				s := <-pool
				sig := sign(ctx, s, copied, d[:])
				pool <- s
				verify(ecPub, d[:], sig)
			}
		}(g)
	}
	wg.Wait()
	fmt.Println("fabric sequence ok: 202 signatures verified")
	if ms, err := strconv.Atoi(os.Getenv("FABRIC_LOOP_MS")); err == nil {
		loop(ctx, slot, os.Args[3], ski[:], ecPub, time.Duration(ms)*time.Millisecond)
	}
}

// loop signs for `d` as Fabric's bccsp/pkcs11 does, counting what the application sees.
func loop(ctx *pkcs11.Ctx, slot uint, pin string, ski []byte, pub *ecdsa.PublicKey, d time.Duration) {
	var signatures, errors, evictions, late, lastError, slowest int64
	start := time.Now()
	end := start.Add(d)
	lateFrom := end.Add(-time.Second)
	failed := func(what string, err error) {
		atomic.AddInt64(&errors, 1)
		atomic.StoreInt64(&lastError, time.Since(start).Milliseconds())
		fmt.Printf("%s: %v\n", what, err)
	}
	fmt.Println("looping")
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var session pkcs11.SessionHandle
			pooled := false
			for time.Now().Before(end) {
				if !pooled {
					s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
					if err != nil {
						failed("C_OpenSession", err)
						time.Sleep(20 * time.Millisecond)
						continue
					}
					if err := ctx.Login(s, pkcs11.CKU_USER, pin); err != nil {
						if e, ok := err.(pkcs11.Error); !ok || e != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
							failed("C_Login", err)
						}
					}
					session, pooled = s, true
				}
				digest := sha256.Sum256([]byte(time.Now().String()))
				began := time.Now()
				sig, err := loopSign(ctx, session, ski, digest[:])
				for took := time.Since(began).Milliseconds(); ; {
					old := atomic.LoadInt64(&slowest)
					if took <= old || atomic.CompareAndSwapInt64(&slowest, old, took) {
						break
					}
				}
				if err == nil {
					verify(pub, digest[:], sig)
					atomic.AddInt64(&signatures, 1)
					if time.Now().After(lateFrom) {
						atomic.AddInt64(&late, 1)
					}
					continue
				}
				// Fabric's rule: a session is dropped only on a 0xB* error.
				if e, ok := err.(pkcs11.Error); ok && uint(e) >= 0xB0 && uint(e) <= 0xBF {
					atomic.AddInt64(&evictions, 1)
					ctx.CloseSession(session)
					pooled = false
				} else {
					failed("signing", err)
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("loop: signatures=%d errors=%d evictions=%d late=%d last_error_ms=%d slowest_ms=%d\n", signatures, errors, evictions, late, lastError, slowest)
}

// loopSign is Fabric's signP11ECDSA: find the private key by SKI, then SignInit and C_Sign.
func loopSign(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, ski, digest []byte) ([]byte, error) {
	if err := ctx.FindObjectsInit(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, ski),
	}); err != nil {
		return nil, err
	}
	objs, _, err := ctx.FindObjects(s, 1)
	ctx.FindObjectsFinal(s)
	if err != nil {
		return nil, err
	}
	if len(objs) != 1 {
		return nil, fmt.Errorf("found %d keys by SKI", len(objs))
	}
	if err := ctx.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, objs[0]); err != nil {
		return nil, err
	}
	return ctx.Sign(s, digest)
}
