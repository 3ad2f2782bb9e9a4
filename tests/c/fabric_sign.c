/* Fabric's signing pattern, as a plain C client: dlopen a PKCS#11 module, log in, make an EC
 * P-256 key pair with a CKA_ID, then for each signature find the private key by CKA_ID
 * (C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal), C_SignInit, C_Sign with a NULL
 * buffer (the size query) and C_Sign, and verify it with the public key. The same source is
 * built with gcc (glibc) and with musl-gcc (run by musl's loader), so that the shim built for
 * each C library is loaded and used by a process of that C library.
 *
 * Usage: fabric_sign MODULE PIN COUNT
 * Prints "signed N errors E" and exits 0 only when every signature verified. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;

#define CHECK(what, call)                                                  \
  do {                                                                     \
    CK_RV rv_ = (call);                                                    \
    if (rv_ != CKR_OK) {                                                   \
      fprintf(stderr, "%s failed: 0x%lx\n", what, (unsigned long)rv_);     \
      return 2;                                                            \
    }                                                                      \
  } while (0)

/* One signature in Fabric's order; 0 when it was made and verified. */
static int sign_once(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, CK_BYTE *id, CK_ULONG id_len) {
  CK_OBJECT_CLASS class = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE find[] = {{CKA_CLASS, &class, sizeof class}, {CKA_ID, id, id_len}};
  CK_OBJECT_HANDLE key;
  CK_ULONG found = 0;
  CHECK("C_FindObjectsInit", f->C_FindObjectsInit(s, find, 2));
  CHECK("C_FindObjects", f->C_FindObjects(s, &key, 1, &found));
  CHECK("C_FindObjectsFinal", f->C_FindObjectsFinal(s));
  if (found != 1) {
    fprintf(stderr, "key not found by CKA_ID\n");
    return 2;
  }
  CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
  CK_BYTE digest[32];
  memset(digest, 0x5a, sizeof digest);
  CHECK("C_SignInit", f->C_SignInit(s, &ecdsa, key));
  CK_ULONG len = 0;
  CHECK("C_Sign (size)", f->C_Sign(s, digest, sizeof digest, NULL, &len));
  CK_BYTE sig[256];
  if (len == 0 || len > sizeof sig) {
    fprintf(stderr, "signature length %lu\n", (unsigned long)len);
    return 2;
  }
  CHECK("C_Sign", f->C_Sign(s, digest, sizeof digest, sig, &len));
  CHECK("C_VerifyInit", f->C_VerifyInit(s, &ecdsa, pub));
  CHECK("C_Verify", f->C_Verify(s, digest, sizeof digest, sig, len));
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODULE PIN COUNT\n", argv[0]);
    return 2;
  }
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  if (!get) {
    fprintf(stderr, "no C_GetFunctionList\n");
    return 2;
  }
  CHECK("C_GetFunctionList", get(&f));
  CK_C_INITIALIZE_ARGS args = {0};
  args.flags = CKF_OS_LOCKING_OK;
  CHECK("C_Initialize", f->C_Initialize(&args));

  CK_SLOT_ID slots[8];
  CK_ULONG n = 8;
  CHECK("C_GetSlotList", f->C_GetSlotList(CK_TRUE, slots, &n));
  if (n == 0) {
    fprintf(stderr, "no token\n");
    return 2;
  }
  CK_SESSION_HANDLE s;
  CHECK("C_OpenSession",
        f->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
  CHECK("C_Login", f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)argv[2], strlen(argv[2])));

  /* An EC P-256 key pair (session objects) with the CKA_ID Fabric finds it by. */
  CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_BYTE id[] = "fabric-sign-c";
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, p256, sizeof p256},
                          {CKA_TOKEN, &no, sizeof no},
                          {CKA_VERIFY, &yes, sizeof yes},
                          {CKA_ID, id, sizeof id - 1}};
  CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &no, sizeof no},
                           {CKA_SIGN, &yes, sizeof yes},
                           {CKA_PRIVATE, &yes, sizeof yes},
                           {CKA_ID, id, sizeof id - 1}};
  CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
  CK_OBJECT_HANDLE pub, priv;
  CHECK("C_GenerateKeyPair", f->C_GenerateKeyPair(s, &gen, pub_t, 4, priv_t, 4, &pub, &priv));

  long count = atol(argv[3]), signed_ = 0, errors = 0;
  for (long i = 0; i < count; i++) {
    if (sign_once(s, pub, id, sizeof id - 1) == 0)
      signed_++;
    else
      errors++;
  }
  CHECK("C_CloseSession", f->C_CloseSession(s));
  CHECK("C_Finalize", f->C_Finalize(NULL));
  printf("signed %ld errors %ld\n", signed_, errors);
  return errors == 0 && signed_ == count ? 0 : 1;
}
