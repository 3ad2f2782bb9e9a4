/*
 * Compiles against the system's PKCS#11 header and the project's own header, loads the shim
 * with dlopen as a C application would, and checks the exported entry points.
 * Usage: header_test /path/to/libpkcs11_shim.so
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include "pkcs11_proxy.h"

/* Debian's p11-kit header is PKCS#11 2.40: the 3.0 interface type is spelled out here
 * (PKCS#11 v3.0 section 3.7, CK_INTERFACE). */
typedef struct {
    CK_UTF8CHAR *pInterfaceName;
    void *pFunctionList;
    CK_FLAGS flags;
} interface_v3;
typedef CK_RV (*get_interface_fn)(CK_UTF8CHAR *, CK_VERSION *, interface_v3 **, CK_FLAGS);

#define CHECK(cond, ...)                          \
    do {                                          \
        if (!(cond)) {                            \
            fprintf(stderr, "FAIL: " __VA_ARGS__); \
            fprintf(stderr, "\n");                \
            return 1;                             \
        }                                         \
    } while (0)

int main(int argc, char **argv) {
    CHECK(argc == 2, "usage: %s SHIM", argv[0]);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != NULL, "dlopen: %s", dlerror());

    CK_C_GetFunctionList get_list = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    get_interface_fn get_interface = (get_interface_fn)dlsym(lib, "C_GetInterface");
    CHECK(get_list && get_interface, "missing C_GetFunctionList or C_GetInterface");
    CHECK(dlsym(lib, "C_WaitForSlotEvent") && dlsym(lib, "C_DecryptVerifyUpdate"), "missing C_* symbols");

    CK_FUNCTION_LIST_PTR list = NULL;
    CHECK(get_list(&list) == CKR_OK && list, "C_GetFunctionList");
    CHECK(list->version.major == 2 && list->version.minor == 40, "2.40 table version");

    interface_v3 *iface = NULL;
    CHECK(get_interface((CK_UTF8CHAR_PTR)PKCS11_PROXY_INTERFACE_NAME, NULL, &iface, 0) == CKR_OK, "C_GetInterface");
    CK_VERSION *v = (CK_VERSION *)iface->pFunctionList;
    CHECK(v->major == 3 && v->minor == 0, "default interface is 3.0");
    CK_VERSION v240 = {2, 40};
    CHECK(get_interface(NULL, &v240, &iface, 0) == CKR_OK && iface->pFunctionList == list, "2.40 interface");

    /* Configuration is read at C_Initialize: without it, a clear error and no crash. */
    unsetenv(PKCS11_PROXY_ENV_SOCKET);
    CK_RV rv = list->C_Initialize(NULL);
    CHECK(rv == CKR_GENERAL_ERROR, "C_Initialize without %s returned 0x%lx", PKCS11_PROXY_ENV_SOCKET, rv);
    CK_ULONG n = 0;
    CHECK(list->C_GetSlotList(CK_TRUE, NULL, &n) == CKR_CRYPTOKI_NOT_INITIALIZED, "not initialised");
    CHECK(list->C_Finalize(NULL) == CKR_CRYPTOKI_NOT_INITIALIZED, "finalize before initialize");

    printf("header_test: ok (proxy %d.%d, protocol %d)\n", PKCS11_PROXY_VERSION_MAJOR,
           PKCS11_PROXY_VERSION_MINOR, PKCS11_PROXY_PROTOCOL_VERSION);
    return 0;
}
