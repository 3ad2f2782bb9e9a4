/*
 * pkcs11_proxy.h - public header of the PKCS#11 proxy (libpkcs11_shim.so).
 *
 * The shim is a standard PKCS#11 module: use it through the system's PKCS#11 header
 * (e.g. <p11-kit/pkcs11.h>) with C_GetFunctionList, C_GetInterface or the C_* symbols.
 * This header adds what is specific to the proxy: the names of its configuration and the
 * versions it implements. It declares no function beyond the standard API.
 *
 * Configuration is read in C_Initialize, never at dlopen time. A missing or invalid
 * configuration makes C_Initialize return CKR_GENERAL_ERROR with one line on stderr; an
 * unreachable server makes it return CKR_FUNCTION_FAILED.
 */
#ifndef PKCS11_PROXY_H
#define PKCS11_PROXY_H

/* Version of this proxy. */
#define PKCS11_PROXY_VERSION_MAJOR 0
#define PKCS11_PROXY_VERSION_MINOR 1

/* Version of the wire protocol between shim and server (refused on mismatch). */
#define PKCS11_PROXY_PROTOCOL_VERSION 3

/* PKCS#11 interface versions offered by C_GetInterface, default (newest) first, as far as the
 * vendor library behind the server offers them: 3.2 (its 12 added functions exported too:
 * C_EncapsulateKey, C_DecapsulateKey, C_VerifySignature*, C_GetSessionValidationFlags,
 * C_Async*, C_WrapKeyAuthenticated, C_UnwrapKeyAuthenticated), then 3.0, then 2.40. A 2.x
 * vendor is offered as 2.40 alone; with no server to ask, 3.0 and 2.40. */
#define PKCS11_PROXY_INTERFACE_NAME "PKCS 11"

/*
 * Server address(es), comma-separated, tried in order:
 *   tls://HOST:PORT   (TLS 1.3, mutual authentication)
 *   tcp://HOST:PORT   (HOST a name, an IPv4 address or [IPv6])
 *   unix:///absolute/path   or   /absolute/path   (used as given: no ".pkcs11" suffix)
 */
#define PKCS11_PROXY_ENV_SOCKET "PKCS11_PROXY_SOCKET"

/* Optional TOML file with the settings below (keys: the names without PKCS11_PROXY_, in
 * lower case); the environment variables win over it. */
#define PKCS11_PROXY_ENV_CONFIG "PKCS11_PROXY_CONFIG"

/* For tls:// addresses: the CA of the server's certificate, this client's certificate and
 * key (PEM files). */
#define PKCS11_PROXY_ENV_TLS_CA "PKCS11_PROXY_TLS_CA"
#define PKCS11_PROXY_ENV_TLS_CERT "PKCS11_PROXY_TLS_CERT"
#define PKCS11_PROXY_ENV_TLS_KEY "PKCS11_PROXY_TLS_KEY"

/* Log level (off, error, warn, info, debug; default warn) and log file (default stderr). */
#define PKCS11_PROXY_ENV_LOG "PKCS11_PROXY_LOG"
#define PKCS11_PROXY_ENV_LOG_FILE "PKCS11_PROXY_LOG_FILE"

/* Connect timeout in milliseconds (default 5000). */
#define PKCS11_PROXY_ENV_CONNECT_TIMEOUT_MS "PKCS11_PROXY_CONNECT_TIMEOUT_MS"

/* Longest wait for one call's answer in milliseconds (default 310000). */
#define PKCS11_PROXY_ENV_CALL_TIMEOUT_MS "PKCS11_PROXY_CALL_TIMEOUT_MS"

/* How long a call, C_Initialize included, keeps trying to reach a server before
 * CKR_DEVICE_ERROR (CKR_FUNCTION_FAILED for C_Initialize), in milliseconds (default 10000;
 * 0 fails at once). */
#define PKCS11_PROXY_ENV_RECONNECT_MS "PKCS11_PROXY_RECONNECT_MS"

/* Transparent recovery after a server restart or failover: "on" (default) or "off". */
#define PKCS11_PROXY_ENV_RECOVERY "PKCS11_PROXY_RECOVERY"

/* Keep the login PIN in memory (zeroized at C_Finalize) for recovery: "on" (default), "off". */
#define PKCS11_PROXY_ENV_KEEP_PIN "PKCS11_PROXY_KEEP_PIN"

/* Server side: the address of the compatible command line `pkcs11-proxy-server LIB [-]`. */
#define PKCS11_PROXY_ENV_DAEMON_SOCKET "PKCS11_DAEMON_SOCKET"

#endif /* PKCS11_PROXY_H */
