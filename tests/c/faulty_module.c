/* A PKCS#11 module for the containment test: it is SoftHSM2 (loaded from FAULTY_MODULE, default
 * /usr/lib/softhsm/libsofthsm2.so), except that C_Sign over the data "CRASH-ME" dereferences
 * NULL, as a vendor library with a bug would: the process that loaded it dies of SIGSEGV.
 * Every other call is SoftHSM2's own. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST wrapped;
static CK_FUNCTION_LIST_PTR real;

static CK_RV faulty_sign(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
                         CK_ULONG_PTR sig_len) {
  if (data != NULL && len == 8 && memcmp(data, "CRASH-ME", 8) == 0) {
    volatile int *nowhere = NULL;
    *nowhere = 1;
  }
  return real->C_Sign(s, data, len, sig, sig_len);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  if (out == NULL) return CKR_ARGUMENTS_BAD;
  if (real == NULL) {
    const char *path = getenv("FAULTY_MODULE");
    void *lib = dlopen(path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) return CKR_GENERAL_ERROR;
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK) return CKR_GENERAL_ERROR;
    wrapped = *real;
    wrapped.C_Sign = faulty_sign;
  }
  *out = &wrapped;
  return CKR_OK;
}
