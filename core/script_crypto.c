/* script_crypto.c — switchboard.crypto and switchboard.jwt: hashes, HMAC,
 * random bytes, constant-time compares, base64url and JSON Web Tokens
 * (HS256, RS256, ES256), on OpenSSL, so that an `upgrade` can check a token
 * without spending its instruction budget on pure-Lua SHA-256. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "script_int.h"

#define RANDOM_MAX 65536 /* bytes one crypto.random call may ask for */

/* ---- base64url (RFC 4648 §5), without padding --------------------------------------- */

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void push_b64url(lua_State *L, const unsigned char *p, size_t len) {
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, (len + 2) / 3 * 4);
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        out[o++] = B64URL[v >> 18];
        out[o++] = B64URL[v >> 12 & 63];
        out[o++] = B64URL[v >> 6 & 63];
        out[o++] = B64URL[v & 63];
    }
    if (i < len) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < len ? (unsigned)p[i + 1] << 8 : 0);
        out[o++] = B64URL[v >> 18];
        out[o++] = B64URL[v >> 12 & 63];
        if (i + 1 < len)
            out[o++] = B64URL[v >> 6 & 63];
    }
    luaL_pushresultsize(&b, o);
}

static int b64url_val(unsigned char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '-' ? 62 : c == '_' ? 63 : -1;
}

/* Decode base64url (trailing '=' padding allowed, nothing else) onto the
 * stack. Returns 1, or 0 (nothing pushed) when s is not base64url. */
static int push_b64url_decoded(lua_State *L, const char *s, size_t len) {
    size_t pad = 0;
    while (len && s[len - 1] == '=' && pad < 2)
        len--, pad++;
    if (len % 4 == 1 || (pad && (len + pad) % 4))
        return 0;
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, len / 4 * 3 + 3);
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_val((unsigned char)s[i]);
        if (v < 0) {
            luaL_pushresultsize(&b, 0);
            lua_pop(L, 1);
            return 0;
        }
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    luaL_pushresultsize(&b, o);
    return 1;
}

/* ---- switchboard.crypto ------------------------------------------------------------- */

static int c_sha256(lua_State *L) {
    size_t len;
    const char *s = script__arg_string(L, 1, 1, "sha256", &len);
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)s, len, md);
    lua_pushlstring(L, (const char *)md, sizeof md);
    return 1;
}

static int hmac256(const char *key, size_t kl, const char *s, size_t len, unsigned char *md) {
    unsigned int n = 0;
    /* HMAC() takes a NULL key as "no key": an empty one must still be a key */
    static const unsigned char empty[1];
    return HMAC(EVP_sha256(), kl ? key : (const char *)empty, (int)kl, (const unsigned char *)s,
                len, md, &n) != NULL &&
           n == SHA256_DIGEST_LENGTH;
}

static int c_hmac_sha256(lua_State *L) {
    size_t kl, len;
    const char *key = script__arg_string(L, 1, 1, "hmac_sha256", &kl);
    const char *s = script__arg_string(L, 2, 2, "hmac_sha256", &len);
    if (kl > INT32_MAX)
        return script__arg_error(L, 1, "hmac_sha256", "key too long");
    unsigned char md[SHA256_DIGEST_LENGTH];
    if (!hmac256(key, kl, s, len, md))
        return luaL_error(L, "hmac_sha256: OpenSSL failed");
    lua_pushlstring(L, (const char *)md, sizeof md);
    return 1;
}

static int c_random(lua_State *L) {
    if (lua_type(L, 1) != LUA_TNUMBER)
        return script__type_error(L, 1, 1, "random", "number");
    int whole;
    lua_Integer n = lua_tointegerx(L, 1, &whole);
    if (!whole || n < 1 || n > RANDOM_MAX)
        return script__arg_error(L, 1, "random", "byte count must be an integer from 1 to 65536");
    luaL_Buffer b;
    unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)n);
    if (RAND_bytes(p, (int)n) != 1)
        return luaL_error(L, "random: the system's random generator failed");
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* Compares in time that depends on the lengths only, never on where the
 * strings differ: for MACs and tokens. */
static int c_equal(lua_State *L) {
    size_t al, bl;
    const char *a = script__arg_string(L, 1, 1, "equal", &al);
    const char *b = script__arg_string(L, 2, 2, "equal", &bl);
    lua_pushboolean(L, al == bl && CRYPTO_memcmp(a, b, al) == 0);
    return 1;
}

static int c_hex(lua_State *L) {
    size_t len;
    const unsigned char *s = (const unsigned char *)script__arg_string(L, 1, 1, "hex", &len);
    static const char digits[] = "0123456789abcdef";
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, len * 2);
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[s[i] >> 4];
        out[2 * i + 1] = digits[s[i] & 15];
    }
    luaL_pushresultsize(&b, len * 2);
    return 1;
}

static int c_b64url_encode(lua_State *L) {
    size_t len;
    const char *s = script__arg_string(L, 1, 1, "base64url_encode", &len);
    push_b64url(L, (const unsigned char *)s, len);
    return 1;
}

static int c_b64url_decode(lua_State *L) {
    size_t len;
    const char *s = script__arg_string(L, 1, 1, "base64url_decode", &len);
    if (push_b64url_decoded(L, s, len))
        return 1;
    lua_pushnil(L);
    lua_pushliteral(L, "invalid base64url");
    return 2;
}

/* ---- switchboard.jwt ---------------------------------------------------------------- */

enum jwt_alg { ALG_HS256 = 1, ALG_RS256 = 2, ALG_ES256 = 4 };

static int alg_of(const char *name, size_t len) {
    if (len != 5)
        return 0;
    if (memcmp(name, "HS256", 5) == 0)
        return ALG_HS256;
    if (memcmp(name, "RS256", 5) == 0)
        return ALG_RS256;
    if (memcmp(name, "ES256", 5) == 0)
        return ALG_ES256;
    return 0;
}

/* json.decode(s) through the module's decoder (lua-cjson's), protected: the
 * decoded value, or nothing (returns 0) when s is not JSON. */
static int push_json_decoded(lua_State *L, const char *s, size_t len) {
    lua_getfield(L, LUA_REGISTRYINDEX, "switchboard.json_decode");
    lua_pushlstring(L, s, len);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

/* Is the decoded value on top a JSON object (a table without list items)? */
static int is_object(lua_State *L) {
    return lua_istable(L, -1) && lua_rawlen(L, -1) == 0;
}

static EVP_PKEY *read_public_key(const char *pem, size_t len) {
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio)
        return NULL;
    EVP_PKEY *k = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    return k;
}

/* A P-256 signature as JWS carries it (r || s, 32 bytes each) in DER for
 * OpenSSL. Returns the length written to *der (OPENSSL_free it), or 0. */
static int es256_der(const unsigned char *sig, size_t len, unsigned char **der) {
    if (len != 64)
        return 0;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
    if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return 0;
    }
    *der = NULL;
    int n = i2d_ECDSA_SIG(es, der);
    ECDSA_SIG_free(es);
    return n > 0 ? n : 0;
}

/* Does sig sign data under pkey with SHA-256? 1 yes, 0 no. */
static int verify_pkey(EVP_PKEY *pkey, const unsigned char *sig, size_t sl, const char *data,
                       size_t dl) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
             EVP_DigestVerify(ctx, sig, sl, (const unsigned char *)data, dl) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

static int fail(lua_State *L, const char *why) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* The algs option: a mask of allowed algorithms (default HS256 only). */
static int read_algs(lua_State *L, int opts) {
    if (lua_getfield(L, opts, "algs") == LUA_TNIL) {
        lua_pop(L, 1);
        return ALG_HS256;
    }
    if (!lua_istable(L, -1))
        return script__arg_error(L, 3, "verify", "algs must be a list like { \"HS256\" }");
    int mask = 0;
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        lua_rawgeti(L, -1, i);
        const char *a = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        int alg = a ? alg_of(a, len) : 0;
        if (!alg)
            return script__arg_error(L, 3, "verify",
                                     "algs may list \"HS256\", \"RS256\" and \"ES256\"");
        mask |= alg;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (!mask)
        return script__arg_error(L, 3, "verify", "algs must not be empty");
    return mask;
}

/* Is the claim at the top of the stack (popped) among opts.aud (a string or
 * a list), given claims.aud a string or a list of strings? */
static int audience_ok(lua_State *L, int want) {
    int claim = lua_gettop(L);
    int ok = 0;
    int wn = lua_type(L, want) == LUA_TTABLE ? (int)lua_rawlen(L, want) : 1;
    int cn = lua_type(L, claim) == LUA_TTABLE ? (int)lua_rawlen(L, claim) : 1;
    for (int i = 1; i <= wn && !ok; i++) {
        if (lua_type(L, want) == LUA_TTABLE)
            lua_rawgeti(L, want, i);
        else
            lua_pushvalue(L, want);
        for (int j = 1; j <= cn && !ok; j++) {
            if (lua_type(L, claim) == LUA_TTABLE)
                lua_rawgeti(L, claim, j);
            else
                lua_pushvalue(L, claim);
            ok = lua_type(L, -1) == LUA_TSTRING && lua_type(L, -2) == LUA_TSTRING &&
                 lua_rawequal(L, -1, -2);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_settop(L, claim - 1);
    return ok;
}

/* A numeric claim: 1 and *v when present, 0 when absent, -1 when not a number. */
static int number_claim(lua_State *L, int claims, const char *name, double *v) {
    int t = lua_getfield(L, claims, name);
    int r = t == LUA_TNIL ? 0 : t == LUA_TNUMBER ? 1 : -1;
    if (r == 1)
        *v = (double)lua_tonumber(L, -1);
    lua_pop(L, 1);
    return r;
}

/* verify(token, key [, opts]) -> claims, or nil and a short reason. */
static int jwt_verify(lua_State *L) {
    size_t tl, kl;
    const char *tok = script__arg_string(L, 1, 1, "verify", &tl);
    const char *key = script__arg_string(L, 2, 2, "verify", &kl);
    if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3))
        return script__type_error(L, 3, 3, "verify", "table");
    if (lua_isnoneornil(L, 3)) {
        lua_settop(L, 2);
        lua_newtable(L);
    }
    lua_settop(L, 3);
    int algs = read_algs(L, 3);
    double leeway = 0;
    if (lua_getfield(L, 3, "leeway") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 0))
            return script__arg_error(L, 3, "verify", "leeway must be a number of seconds >= 0");
        leeway = (double)lua_tonumber(L, -1);
    }
    int aud = lua_getfield(L, 3, "aud") != LUA_TNIL ? 5 : 0; /* stack: 4 leeway, 5 aud, 6 iss */
    if (aud && !lua_isstring(L, 5) && !lua_istable(L, 5))
        return script__arg_error(L, 3, "verify", "aud must be a string or a list of strings");
    int iss = lua_getfield(L, 3, "iss") != LUA_TNIL ? 6 : 0;
    if (iss && lua_type(L, 6) != LUA_TSTRING)
        return script__arg_error(L, 3, "verify", "iss must be a string");
    if (kl == 0)
        return script__arg_error(L, 2, "verify", "key must not be empty");
    int pem = kl > 10 && memcmp(key, "-----BEGIN", 10) == 0;

    /* header.payload.signature, each base64url */
    const char *d1 = memchr(tok, '.', tl);
    const char *d2 = d1 ? memchr(d1 + 1, '.', tl - (size_t)(d1 + 1 - tok)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', tl - (size_t)(d2 + 1 - tok)))
        return fail(L, "malformed");
    size_t signed_len = (size_t)(d2 - tok);
    if (!push_b64url_decoded(L, tok, (size_t)(d1 - tok))) /* 7 header json */
        return fail(L, "malformed");
    if (!push_b64url_decoded(L, d1 + 1, (size_t)(d2 - d1 - 1))) /* 8 payload json */
        return fail(L, "malformed");
    if (!push_b64url_decoded(L, d2 + 1, tl - signed_len - 1)) /* 9 signature */
        return fail(L, "malformed");
    size_t hl;
    const char *hj = lua_tolstring(L, 7, &hl);
    if (!push_json_decoded(L, hj, hl) || !is_object(L)) /* 10 header */
        return fail(L, "malformed");
    size_t al = 0;
    const char *alg_name =
        lua_getfield(L, 10, "alg") == LUA_TSTRING ? lua_tolstring(L, -1, &al) : NULL;
    if (!alg_name)
        return fail(L, "malformed");
    int alg = alg_of(alg_name, al); /* "none" and everything else: 0 */
    lua_pop(L, 1);
    /* RFC 7515 §4.1.11: extensions the token says must be understood are not */
    int crit = lua_getfield(L, 10, "crit") != LUA_TNIL;
    lua_pop(L, 1);
    if (crit)
        return fail(L, "malformed");
    /* a public key is never an HMAC secret: with both algs allowed, a token
     * "HS256"-signed with the (public) PEM text must not pass */
    if (!(alg & algs) || (alg == ALG_HS256) == pem)
        return fail(L, "alg not allowed");

    size_t sl;
    const unsigned char *sig = (const unsigned char *)lua_tolstring(L, 9, &sl);
    int good = 0;
    if (alg == ALG_HS256) {
        unsigned char md[SHA256_DIGEST_LENGTH];
        if (kl > INT32_MAX || !hmac256(key, kl, tok, signed_len, md))
            return luaL_error(L, "verify: OpenSSL failed");
        good = sl == sizeof md && CRYPTO_memcmp(md, sig, sl) == 0;
    } else {
        EVP_PKEY *pkey = read_public_key(key, kl);
        if (!pkey)
            return script__arg_error(L, 2, "verify", "not a PEM public key");
        int want = alg == ALG_RS256 ? EVP_PKEY_RSA : EVP_PKEY_EC;
        if (EVP_PKEY_get_base_id(pkey) != want) {
            EVP_PKEY_free(pkey);
            return fail(L, "alg not allowed");
        }
        if (alg == ALG_RS256) {
            good = verify_pkey(pkey, sig, sl, tok, signed_len);
        } else {
            unsigned char *der = NULL;
            int dl = es256_der(sig, sl, &der);
            good = dl && verify_pkey(pkey, der, (size_t)dl, tok, signed_len);
            OPENSSL_free(der);
        }
        EVP_PKEY_free(pkey);
    }
    if (!good)
        return fail(L, "bad signature");

    size_t pl;
    const char *pj = lua_tolstring(L, 8, &pl);
    if (!push_json_decoded(L, pj, pl) || !is_object(L)) /* 11 claims */
        return fail(L, "malformed");
    int claims = lua_gettop(L);
    double now = (double)time(NULL), exp, nbf;
    int r = number_claim(L, claims, "exp", &exp);
    if (r < 0)
        return fail(L, "malformed");
    if (r && now >= exp + leeway)
        return fail(L, "expired");
    if ((r = number_claim(L, claims, "nbf", &nbf)) < 0)
        return fail(L, "malformed");
    if (r && now + leeway < nbf)
        return fail(L, "not yet valid");
    if (aud) {
        lua_getfield(L, claims, "aud");
        if (!audience_ok(L, aud))
            return fail(L, "wrong audience");
    }
    if (iss) {
        lua_getfield(L, claims, "iss");
        int ok = lua_rawequal(L, -1, iss);
        lua_pop(L, 1);
        if (!ok)
            return fail(L, "wrong issuer");
    }
    lua_settop(L, claims);
    return 1;
}

/* sign(claims, secret) -> an HS256 token. */
static int jwt_sign(lua_State *L) {
    if (!lua_istable(L, 1))
        return script__type_error(L, 1, 1, "sign", "table");
    size_t kl;
    const char *key = script__arg_string(L, 2, 2, "sign", &kl);
    if (kl == 0 || kl > INT32_MAX)
        return script__arg_error(L, 2, "sign", "key must not be empty");
    if (kl > 10 && memcmp(key, "-----BEGIN", 10) == 0)
        return script__arg_error(L, 2, "sign", "HS256 signs with a secret, not a PEM key");
    lua_settop(L, 2);
    lua_getfield(L, LUA_REGISTRYINDEX, "switchboard.json_encode");
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1); /* an unencodable claim raises, as json.encode does */
    size_t pl;
    const char *pj = lua_tolstring(L, 3, &pl);
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    push_b64url(L, (const unsigned char *)header, sizeof header - 1);
    lua_pushliteral(L, ".");
    push_b64url(L, (const unsigned char *)pj, pl);
    lua_concat(L, 3);
    size_t sl;
    const char *signing = lua_tolstring(L, -1, &sl);
    unsigned char md[SHA256_DIGEST_LENGTH];
    if (!hmac256(key, kl, signing, sl, md))
        return luaL_error(L, "sign: OpenSSL failed");
    lua_pushliteral(L, ".");
    push_b64url(L, md, sizeof md);
    lua_concat(L, 3);
    return 1;
}

void script__crypto_open(lua_State *L) {
    static const luaL_Reg crypto[] = {
        {"sha256", c_sha256},
        {"hmac_sha256", c_hmac_sha256},
        {"random", c_random},
        {"equal", c_equal},
        {"hex", c_hex},
        {"base64url_encode", c_b64url_encode},
        {"base64url_decode", c_b64url_decode},
        {NULL, NULL},
    };
    static const luaL_Reg jwt[] = {{"verify", jwt_verify}, {"sign", jwt_sign}, {NULL, NULL}};
    luaL_newlib(L, crypto);
    lua_setfield(L, -2, "crypto");
    luaL_newlib(L, jwt);
    lua_setfield(L, -2, "jwt");
}
