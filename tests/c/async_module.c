/* A PKCS#11 module for the asynchronous-session test: SoftHSM2 as a token that says it
 * supports PKCS#11 3.2 asynchronous sessions (CKF_ASYNC_SESSION_SUPPORTED in its token
 * flags). A C_OpenSession asking for one (CKF_ASYNC_SESSION) is counted in the file named by
 * ASYNC_SEEN (one byte per session asked), then opened by SoftHSM2 as an ordinary session:
 * the test reads the file to tell whether such a request ever reached the vendor. SoftHSM2 is
 * loaded from ASYNC_MODULE (default /usr/lib/softhsm/libsofthsm2.so). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <p11-kit/pkcs11.h>

/* PKCS#11 3.2's values (p11-kit's header is 2.40). */
#define ASYNC_SESSION 0x00000008UL
#define ASYNC_SESSION_SUPPORTED 0x04000000UL

static CK_FUNCTION_LIST wrapped;
static CK_FUNCTION_LIST_PTR real;

static CK_RV w_C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO *info) {
  CK_RV rv = real->C_GetTokenInfo(slot, info);
  if (rv == CKR_OK && info != NULL) info->flags |= ASYNC_SESSION_SUPPORTED;
  return rv;
}

static CK_RV w_C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, void *application, CK_NOTIFY notify,
                             CK_SESSION_HANDLE *session) {
  if (flags & ASYNC_SESSION) {
    const char *seen = getenv("ASYNC_SEEN");
    FILE *f = seen ? fopen(seen, "a") : NULL;
    if (f != NULL) {
      fputc('a', f);
      fclose(f);
    }
    flags &= ~ASYNC_SESSION;
  }
  return real->C_OpenSession(slot, flags, application, notify, session);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  if (out == NULL) return CKR_ARGUMENTS_BAD;
  if (real == NULL) {
    const char *path = getenv("ASYNC_MODULE");
    void *lib = dlopen(path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) return CKR_GENERAL_ERROR;
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK) return CKR_GENERAL_ERROR;
    wrapped = *real;
    wrapped.C_GetTokenInfo = w_C_GetTokenInfo;
    wrapped.C_OpenSession = w_C_OpenSession;
  }
  *out = &wrapped;
  return CKR_OK;
}
