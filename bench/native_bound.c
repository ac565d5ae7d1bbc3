/* native_bound.c: the least a native (C) server of a compiled model must do per request. A bound, not a product.
 *
 * bench/native_bound.py measures it beside the pod, against the same in-process floor. What it does: one thread, epoll,
 * HTTP/1.1 keep-alive on 127.0.0.1:PORT; POST /predict with a Content-Length body {"inputs": [{column: value, ...},
 * ...]} is parsed in place, straight into the ONNX feeds laid out as resolved.json says (templates/bento/mf_inputs.py
 * `feeds`), run once through ONNX Runtime's C API, and answered as the pod answers (mf_flavors._onnx: the output,
 * flattened or per row; a request whose guard output marks a row, or whose output is not finite, is a 500). Any GET
 * answers "ok" (readiness). A body it cannot read gets a 400; nothing a client sends may crash it.
 *
 * Usage: native_bound PORT CONFIG    (CONFIG: plain text that bench/native_bound.py writes from resolved.json)
 * Build: gcc -O2 -o native_bound native_bound.c -ldl -lm
 * On SIGTERM/SIGINT it prints, to stderr, its requests' mean time inside it (parse, run, answer), then exits.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---- ONNX Runtime's C API, declared here: no header is installed, and none is committed. ----
 * OrtGetApiBase() (exported by libonnxruntime.so) gives OrtApiBase; its GetApi(version) gives OrtApi, a struct of
 * nothing but function pointers. Upstream's include/onnxruntime/core/session/onnxruntime_c_api.h only ever appends
 * to OrtApi (an OrtApi of version N is a prefix of every later one), so a function's slot, its index in that struct
 * counted from 0, holds in every release since the one that added it. The slots were counted by hand in that header
 * at ORT_API_VERSION 13 and by a script at 29, alike; each exists since version 1, but 252 (since 15, the version asked
 * for). Only the slots called here are declared. */
typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtValue OrtValue;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtTensorTypeAndShapeInfo OrtShape;
typedef struct OrtAllocator OrtAllocator;
typedef struct OrtApiBase {
    const void *const *(*GetApi)(uint32_t version); /* really `const OrtApi*`: here, an array of slots */
    const char *(*GetVersionString)(void);
} OrtApiBase;
enum { API_VERSION = 15 };
enum { T_FLOAT = 1, T_STRING = 8, T_DOUBLE = 11 };       /* ONNXTensorElementDataType */
enum { LOG_WARNING = 2, SEQUENTIAL = 0, ARENA = 1, MEM_DEFAULT = 0 }; /* OrtLoggingLevel, ExecutionMode, ... */

static struct {
    const char *(*GetErrorMessage)(const OrtStatus *);                                                       /* 2 */
    OrtStatus *(*CreateEnv)(int level, const char *logid, OrtEnv **);                                        /* 3 */
    OrtStatus *(*CreateSession)(const OrtEnv *, const char *path, const OrtSessionOptions *, OrtSession **); /* 7 */
    OrtStatus *(*Run)(OrtSession *, const void *run_options, const char *const *input_names,
                      const OrtValue *const *inputs, size_t n_inputs, const char *const *output_names,
                      size_t n_outputs, OrtValue **outputs);                                                 /* 9 */
    OrtStatus *(*CreateSessionOptions)(OrtSessionOptions **);                                                /* 10 */
    OrtStatus *(*SetSessionExecutionMode)(OrtSessionOptions *, int mode);                                    /* 13 */
    OrtStatus *(*SetIntraOpNumThreads)(OrtSessionOptions *, int);                                            /* 24 */
    OrtStatus *(*SetInterOpNumThreads)(OrtSessionOptions *, int);                                            /* 25 */
    OrtStatus *(*SessionGetInputCount)(const OrtSession *, size_t *);                                        /* 30 */
    OrtStatus *(*SessionGetInputName)(const OrtSession *, size_t, OrtAllocator *, char **);                  /* 36 */
    OrtStatus *(*CreateTensorAsOrtValue)(OrtAllocator *, const int64_t *shape, size_t rank, int type,
                                         OrtValue **);                                                      /* 48 */
    OrtStatus *(*CreateTensorWithDataAsOrtValue)(const OrtMemoryInfo *, void *data, size_t bytes,
                                                 const int64_t *shape, size_t rank, int type, OrtValue **); /* 49 */
    OrtStatus *(*GetTensorMutableData)(OrtValue *, void **);                                                 /* 51 */
    OrtStatus *(*GetTensorElementType)(const OrtShape *, int *);                                             /* 60 */
    OrtStatus *(*GetDimensionsCount)(const OrtShape *, size_t *);                                            /* 61 */
    OrtStatus *(*GetDimensions)(const OrtShape *, int64_t *dims, size_t n);                                  /* 62 */
    OrtStatus *(*GetTensorTypeAndShape)(const OrtValue *, OrtShape **);                                      /* 65 */
    OrtStatus *(*CreateCpuMemoryInfo)(int allocator_type, int mem_type, OrtMemoryInfo **);                   /* 69 */
    OrtStatus *(*AllocatorFree)(OrtAllocator *, void *);                                                     /* 76 */
    OrtStatus *(*GetAllocatorWithDefaultOptions)(OrtAllocator **);                                           /* 78 */
    void (*ReleaseStatus)(OrtStatus *);                                                                      /* 93 */
    void (*ReleaseValue)(OrtValue *);                                                                        /* 96 */
    void (*ReleaseTensorTypeAndShapeInfo)(OrtShape *);                                                       /* 99 */
    void (*ReleaseSessionOptions)(OrtSessionOptions *);                                                      /* 100 */
    OrtStatus *(*GetResizedStringTensorElementBuffer)(OrtValue *, size_t index, size_t bytes, char **);      /* 252 */
} ort;

static void load_ort(const char *library)
{
    void *handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (!handle) { fprintf(stderr, "dlopen: %s\n", dlerror()); exit(1); }
    const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))dlsym(handle, "OrtGetApiBase");
    if (!get_base) { fprintf(stderr, "no OrtGetApiBase in %s\n", library); exit(1); }
    const OrtApiBase *base = get_base();
    fprintf(stderr, "onnxruntime %s, C API version %d\n", base->GetVersionString(), API_VERSION);
    const void *const *api = base->GetApi(API_VERSION);
    if (!api) { fprintf(stderr, "this onnxruntime has no C API version %d\n", API_VERSION); exit(1); }
#define SLOT(name, index) memcpy(&ort.name, &api[index], sizeof ort.name) /* a data pointer into a function one */
    SLOT(GetErrorMessage, 2); SLOT(CreateEnv, 3); SLOT(CreateSession, 7); SLOT(Run, 9);
    SLOT(CreateSessionOptions, 10); SLOT(SetSessionExecutionMode, 13); SLOT(SetIntraOpNumThreads, 24);
    SLOT(SetInterOpNumThreads, 25); SLOT(SessionGetInputCount, 30); SLOT(SessionGetInputName, 36);
    SLOT(CreateTensorAsOrtValue, 48); SLOT(CreateTensorWithDataAsOrtValue, 49); SLOT(GetTensorMutableData, 51);
    SLOT(GetTensorElementType, 60); SLOT(GetDimensionsCount, 61);
    SLOT(GetDimensions, 62); SLOT(GetTensorTypeAndShape, 65); SLOT(CreateCpuMemoryInfo, 69);
    SLOT(AllocatorFree, 76); SLOT(GetAllocatorWithDefaultOptions, 78); SLOT(ReleaseStatus, 93);
    SLOT(ReleaseValue, 96); SLOT(ReleaseTensorTypeAndShapeInfo, 99); SLOT(ReleaseSessionOptions, 100);
    SLOT(GetResizedStringTensorElementBuffer, 252);
#undef SLOT
}

/* At start-up any failure of ONNX Runtime ends the process; while serving, it fails the request (ok() is false). */
static void must(OrtStatus *status, const char *what)
{
    if (!status) return;
    fprintf(stderr, "%s: %s\n", what, ort.GetErrorMessage(status));
    exit(1);
}

static int ok(OrtStatus *status)
{
    if (!status) return 1;
    fprintf(stderr, "onnxruntime: %s\n", ort.GetErrorMessage(status));
    ort.ReleaseStatus(status);
    return 0;
}

/* ---- The model: columns and feeds from CONFIG. ---- */
enum { MAX_COLUMNS = 64, MAX_FEEDS = 64, NAME = 256 };
enum kind { K_FLOAT, K_INT, K_BOOL, K_STRING };  /* double/float; long/integer; boolean; string */
enum dtype { D_F64, D_F32, D_STRING };           /* a feed's numpy dtype: float64, float32, object */

struct column { char name[NAME]; size_t name_len; enum kind kind; int required, feed, offset; };
struct feed {
    char name[NAME];
    enum dtype dtype;
    int width;            /* columns in this feed: its tensor is [rows, width] */
    double *f64;          /* max_rows * width, row-major */
    float *f32;
    const char **strings; /* max_rows pointers into the request body (unescaped in place), and their lengths */
    size_t *lengths;
};

static struct column columns[MAX_COLUMNS];
static struct feed feeds[MAX_FEEDS];
static int n_columns, n_feeds, max_rows, flatten;
static char library[4096], model_path[4096], output[NAME], guard[NAME];
static OrtSession *session;
static OrtMemoryInfo *cpu;
static OrtAllocator *allocator;
static const char *input_names[MAX_FEEDS], *output_names[2];
static size_t n_outputs;

static void bad_config(const char *line) { fprintf(stderr, "bad config line: %s\n", line); exit(1); }

/* Lines: `library PATH`, `model PATH`, `max_rows N`, `output FLATTEN NAME`, `guard NAME`,
 * `column KIND REQUIRED NAME` (signature order) and `feed DTYPE I,J,... NAME` (ONNX input order; I, J: columns). */
static void read_config(const char *path)
{
    FILE *file = fopen(path, "r");
    if (!file) { perror(path); exit(1); }
    char line[8192], word[32], kind[32], rest[NAME];
    int a, n;
    while (fgets(line, sizeof line, file)) {
        line[strcspn(line, "\n")] = 0;
        if (sscanf(line, "%31s %n", word, &n) != 1) continue;
        char *tail = line + n;
        if (!strcmp(word, "library")) snprintf(library, sizeof library, "%s", tail);
        else if (!strcmp(word, "model")) snprintf(model_path, sizeof model_path, "%s", tail);
        else if (!strcmp(word, "max_rows")) max_rows = atoi(tail);
        else if (!strcmp(word, "guard")) snprintf(guard, sizeof guard, "%s", tail);
        else if (!strcmp(word, "output")) {
            if (sscanf(tail, "%d %255[^\n]", &flatten, output) != 2) bad_config(line);
        } else if (!strcmp(word, "column")) {
            struct column *c = &columns[n_columns];
            if (n_columns == MAX_COLUMNS || sscanf(tail, "%31s %d %255[^\n]", kind, &a, c->name) != 3) bad_config(line);
            c->name_len = strlen(c->name), c->required = a, c->feed = -1;
            if (!strcmp(kind, "double") || !strcmp(kind, "float")) c->kind = K_FLOAT;
            else if (!strcmp(kind, "long") || !strcmp(kind, "integer")) c->kind = K_INT;
            else if (!strcmp(kind, "boolean")) c->kind = K_BOOL;
            else if (!strcmp(kind, "string")) c->kind = K_STRING;
            else bad_config(line);
            n_columns++;
        } else if (!strcmp(word, "feed")) {
            struct feed *f = &feeds[n_feeds];
            char list[4096];
            if (n_feeds == MAX_FEEDS || sscanf(tail, "%31s %4095s %255[^\n]", kind, list, rest) != 3) bad_config(line);
            snprintf(f->name, NAME, "%s", rest);
            f->dtype = !strcmp(kind, "float64") ? D_F64 : !strcmp(kind, "float32") ? D_F32 : D_STRING;
            if (f->dtype == D_STRING && strcmp(kind, "object")) bad_config(line);
            for (char *item = strtok(list, ","); item; item = strtok(NULL, ",")) {
                a = atoi(item);
                if (a < 0 || a >= n_columns || columns[a].feed >= 0) bad_config(line);
                /* a string column feeds a string tensor of its own; numbers (booleans as 0/1) a float one */
                if ((columns[a].kind == K_STRING) != (f->dtype == D_STRING)) bad_config(line);
                columns[a].feed = n_feeds, columns[a].offset = f->width++;
            }
            if (f->width == 0 || (f->dtype == D_STRING && f->width != 1)) bad_config(line);
            input_names[n_feeds++] = f->name;
        } else bad_config(line);
    }
    fclose(file);
    if (!*library || !*model_path || !*output || max_rows < 1 || !n_feeds) bad_config("(incomplete)");
    for (int i = 0; i < n_columns; i++)
        if (columns[i].feed < 0) { fprintf(stderr, "column %s feeds nothing\n", columns[i].name); exit(1); }
    for (int i = 0; i < n_feeds; i++) { /* buffers for a full batch, allocated once */
        struct feed *f = &feeds[i];
        if (f->dtype == D_F64) f->f64 = calloc((size_t)max_rows * f->width, sizeof(double));
        if (f->dtype == D_F32) f->f32 = calloc((size_t)max_rows * f->width, sizeof(float));
        if (f->dtype == D_STRING)
            f->strings = calloc(max_rows, sizeof(char *)), f->lengths = calloc(max_rows, sizeof(size_t));
    }
    output_names[0] = output, output_names[1] = guard, n_outputs = *guard ? 2 : 1;
}

/* One intra-op and one inter-op thread, sequential execution: as the pod's session (mf_flavors._onnx). The model's
 * input names, read back through slots 30 and 36, must be the config's: a check of the slots besides the answers. */
static void open_session(void)
{
    OrtEnv *env;
    OrtSessionOptions *options;
    must(ort.CreateEnv(LOG_WARNING, "native_bound", &env), "CreateEnv");
    must(ort.CreateSessionOptions(&options), "CreateSessionOptions");
    must(ort.SetIntraOpNumThreads(options, 1), "SetIntraOpNumThreads");
    must(ort.SetInterOpNumThreads(options, 1), "SetInterOpNumThreads");
    must(ort.SetSessionExecutionMode(options, SEQUENTIAL), "SetSessionExecutionMode");
    must(ort.CreateSession(env, model_path, options, &session), model_path);
    ort.ReleaseSessionOptions(options);
    must(ort.CreateCpuMemoryInfo(ARENA, MEM_DEFAULT, &cpu), "CreateCpuMemoryInfo");
    must(ort.GetAllocatorWithDefaultOptions(&allocator), "GetAllocatorWithDefaultOptions");
    size_t count;
    must(ort.SessionGetInputCount(session, &count), "SessionGetInputCount");
    if (count != (size_t)n_feeds) bad_config("(not the model's inputs)");
    for (size_t i = 0; i < count; i++) {
        char *name;
        must(ort.SessionGetInputName(session, i, allocator, &name), "SessionGetInputName");
        if (strcmp(name, feeds[i].name)) bad_config(feeds[i].name); /* not the model's input at this index */
        must(ort.AllocatorFree(allocator, name), "AllocatorFree");
    }
}

/* ---- The body, parsed in place (strings unescaped where they stand) into the feeds. ---- */
static char *skip(char *p, char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static int hex4(const char *p, const char *end, uint32_t *out)
{
    *out = 0;
    for (int i = 0; i < 4; i++) {
        char c = p + i < end ? p[i] : 0;
        int digit = c >= '0' && c <= '9' ? c - '0' : (c | 32) >= 'a' && (c | 32) <= 'f' ? (c | 32) - 'a' + 10 : -1;
        if (digit < 0) return 0;
        *out = *out << 4 | (uint32_t)digit;
    }
    return 1;
}

/* The JSON string at p, unescaped in place (an escape is never shorter than its UTF-8, so the text never overtakes the
 * reading): *text and *len (a \u0000 included), and the position after it; NULL if p holds none, or a lone surrogate.
 * UTF-8 itself is not validated. */
static char *string(char *p, char *end, char **text, size_t *len)
{
    if (p >= end || *p != '"') return NULL;
    char *w = *text = ++p;
    while (p < end) {
        unsigned char c = (unsigned char)*p++;
        if (c == '"') { *len = (size_t)(w - *text); return p; }
        if (c < 0x20) return NULL;
        if (c != '\\') { *w++ = (char)c; continue; }
        static const char *escapes = "\"\\/bfnrt", *escaped = "\"\\/\b\f\n\r\t";
        const char *escape = p < end && *p ? strchr(escapes, *p) : NULL;
        uint32_t code, low;
        if (escape) { *w++ = escaped[escape - escapes], p++; continue; }
        if (p >= end || *p++ != 'u' || !hex4(p, end, &code) || (code >= 0xDC00 && code < 0xE000)) return NULL;
        p += 4;
        if (code >= 0xD800 && code < 0xDC00) { /* a surrogate pair */
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, end, &low) || low < 0xDC00 || low >= 0xE000)
                return NULL;
            p += 6, code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
        }
        int extra = code < 0x80 ? 0 : code < 0x800 ? 1 : code < 0x10000 ? 2 : 3; /* UTF-8: continuation bytes */
        *w++ = (char)(extra ? (0xFF80 >> extra & 0xFF) | code >> 6 * extra : code);
        for (; extra; extra--) *w++ = (char)(0x80 | (code >> 6 * (extra - 1) & 0x3F));
    }
    return NULL;
}

typedef unsigned __int128 u128;
static const uint64_t TEN[20] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000,
                                 10000000000, 100000000000, 1000000000000, 10000000000000, 100000000000000,
                                 1000000000000000, 10000000000000000, 100000000000000000, 1000000000000000000,
                                 10000000000000000000u};

/* q × 2^exp2 (q > 0; `inexact`: q was truncated, the true value is a little above) rounded to the nearest double,
 * ties to even, as strtod rounds: the top 53 bits of q, rounded up past half (or at half when inexact or odd). */
static double rounded(u128 q, int inexact, int exp2)
{
    int bits = 128 - (q >> 64 ? __builtin_clzll((uint64_t)(q >> 64)) : 64 + __builtin_clzll((uint64_t)q));
    if (bits <= 53) return ldexp((double)(uint64_t)q, exp2);
    int drop = bits - 53;
    uint64_t top = (uint64_t)(q >> drop);
    u128 rest = q & (((u128)1 << drop) - 1), half = (u128)1 << (drop - 1);
    if (rest > half || (rest == half && (inexact || (top & 1)))) top++; /* 2^53 after a carry is still exact */
    return ldexp((double)top, exp2 + drop);
}

/* The JSON number at p into *value, correctly rounded as Python's json and msgspec read it: up to 19 significant
 * digits and a power of ten within 1e±22 are exact in a double, so one multiply or divide rounds once (Clinger's fast
 * path); up to 19 digits and 1e±19, 128-bit integers hold the exact quotient or product (`rounded`); any other number
 * goes to strtod (the body is NUL-terminated; the C locale's '.'). `integer`: no fraction or exponent, within int64 (a
 * long column). NULL if p holds no number, or an infinite one (1e400: msgspec refuses it too). */
static char *number(char *p, char *end, double *value, int integer)
{
    static const double powers[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    char *start = p;
    int negative = 0, digits = 0, exponent = 0, slow = 0;
    uint64_t mantissa = 0;
    if (p < end && *p == '-') negative = 1, p++;
    if (p >= end || *p < '0' || *p > '9') return NULL;
    if (*p == '0') p++; /* JSON: no leading zeros */
    else for (; p < end && *p >= '0' && *p <= '9'; p++)
        if (++digits > 19) slow = 1, exponent++; else mantissa = mantissa * 10 + (uint64_t)(*p - '0');
    if (p < end && *p == '.') {
        if (integer || ++p >= end || *p < '0' || *p > '9') return NULL;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (mantissa == 0 && *p == '0') { exponent--; continue; } /* leading zeros of the fraction */
            if (++digits > 19) slow = 1; else mantissa = mantissa * 10 + (uint64_t)(*p - '0'), exponent--;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int sign = 1, e = 0;
        if (integer || ++p >= end) return NULL;
        if (*p == '+' || *p == '-') sign = *p++ == '-' ? -1 : 1;
        if (p >= end || *p < '0' || *p > '9') return NULL;
        for (; p < end && *p >= '0' && *p <= '9'; p++) if (e < 100000) e = e * 10 + (*p - '0');
        exponent += sign * e;
    }
    if (integer && (slow || mantissa > (uint64_t)INT64_MAX + (uint64_t)negative)) return NULL; /* msgspec's int64 */
    if (!slow && mantissa <= (1ULL << 53) && exponent >= -22 && exponent <= 22)
        *value = exponent < 0 ? (double)mantissa / powers[-exponent] : (double)mantissa * powers[exponent];
    else if (!slow && mantissa && exponent >= -19 && exponent <= 19) { /* 17-19 digits: exact in 128 bits */
        if (exponent >= 0) *value = rounded((u128)mantissa * TEN[exponent], 0, 0);
        else { /* mantissa / 10^k: shifted left as far as 128 bits allow, the quotient keeps 60+ bits */
            int shift = 64 + __builtin_clzll(mantissa);
            u128 shifted = (u128)mantissa << shift;
            *value = rounded(shifted / TEN[-exponent], shifted % TEN[-exponent] != 0, -shift);
        }
    } else *value = strtod(start + negative, NULL);
    if (negative) *value = -*value;
    return isfinite(*value) ? p : NULL;
}

/* A column's value for row r into its feed; null only for an optional number (then NaN, as numpy reads None). */
static char *cell(char *p, char *end, const struct column *c, int r)
{
    struct feed *f = &feeds[c->feed];
    double value;
    if (c->kind == K_STRING) {
        char *text;
        size_t len;
        if (!(p = string(p, end, &text, &len))) return NULL;
        f->strings[r] = text, f->lengths[r] = len;
        return p;
    }
    if (end - p >= 4 && !memcmp(p, "null", 4) && !c->required) value = NAN, p += 4;
    else if (c->kind == K_BOOL) {
        if (end - p >= 4 && !memcmp(p, "true", 4)) value = 1, p += 4;
        else if (end - p >= 5 && !memcmp(p, "false", 5)) value = 0, p += 5;
        else return NULL;
    } else if (!(p = number(p, end, &value, c->kind == K_INT))) return NULL;
    if (f->dtype == D_F64) f->f64[r * f->width + c->offset] = value;
    else f->f32[r * f->width + c->offset] = (float)value;
    return p;
}

/* One row's object: every key a column (at most once), every required column given, an absent optional number NaN. */
static char *row(char *p, char *end, int r)
{
    uint64_t seen = 0;
    if (p >= end || *p != '{') return NULL;
    p = skip(p + 1, end);
    if (p < end && *p == '}') p++;
    else for (;;) {
        char *key;
        size_t len;
        int c;
        if (!(p = string(p, end, &key, &len))) return NULL;
        for (c = 0; c < n_columns && (columns[c].name_len != len || memcmp(columns[c].name, key, len)); c++) {}
        if (c == n_columns || seen >> c & 1) return NULL;
        seen |= 1ULL << c;
        p = skip(p, end);
        if (p >= end || *p != ':') return NULL;
        if (!(p = cell(skip(p + 1, end), end, &columns[c], r))) return NULL;
        p = skip(p, end);
        if (p < end && *p == ',') { p = skip(p + 1, end); continue; }
        if (p < end && *p == '}') { p++; break; }
        return NULL;
    }
    for (int c = 0; c < n_columns; c++) {
        if (seen >> c & 1) continue;
        if (columns[c].required || columns[c].kind == K_STRING) return NULL;
        struct feed *f = &feeds[columns[c].feed];
        if (f->dtype == D_F64) f->f64[r * f->width + columns[c].offset] = NAN;
        else f->f32[r * f->width + columns[c].offset] = NAN;
    }
    return p;
}

/* The whole body: exactly {"inputs": [row, ...]} with 1 to max_rows rows. Returns the rows, or -1. */
static int parse(char *p, char *end)
{
    char *key;
    size_t len;
    int n = 0;
    p = skip(p, end);
    if (p >= end || *p != '{') return -1;
    if (!(p = string(skip(p + 1, end), end, &key, &len)) || len != 6 || memcmp(key, "inputs", 6)) return -1;
    p = skip(p, end);
    if (p >= end || *p != ':') return -1;
    p = skip(p + 1, end);
    if (p >= end || *p != '[') return -1;
    p = skip(p + 1, end);
    for (;;) {
        if (n == max_rows || !(p = row(p, end, n++))) return -1;
        p = skip(p, end);
        if (p < end && *p == ',') { p = skip(p + 1, end); continue; }
        if (p < end && *p == ']') break;
        return -1;
    }
    p = skip(p + 1, end);
    if (p >= end || *p != '}') return -1;
    return skip(p + 1, end) == end ? n : -1;
}

/* ---- Running the model and writing its answer. ---- */
struct buffer { char *data; size_t len, cap; };
static struct buffer answer;
static struct { uint64_t requests, parse_ns, run_ns, answer_ns; } stats;

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void reserve(struct buffer *b, size_t more)
{
    if (b->len + more <= b->cap) return;
    while (b->cap < b->len + more) b->cap = b->cap ? b->cap * 2 : 4096;
    if (!(b->data = realloc(b->data, b->cap))) { perror("realloc"); exit(1); }
}

static u128 ten(int k) { return k <= 19 ? TEN[k] : (u128)TEN[19] * TEN[k - 19]; }

/* v = m × 2^e rounded to p significant digits, D × 10^q (q = e10 - p + 1): whether D reads back as v, i.e. is within
 * half an ulp (2^(e-1)) of it, compared as 128-bit integers: everything times 4 × 2^max(-e,0) × 10^max(-q,0). The
 * double below a power of two is half an ulp away: its midpoint is a quarter, and the nearest D, below v, may miss it
 * where D + 1 is still within half an ulp above. */
static int reads_back(uint64_t m, int e, int q, uint64_t *digits)
{
    u128 scale = ten(q < 0 ? -q : 0);
    u128 value = ((u128)m << (e > 0 ? e : 0)) * scale;     /* v, scaled */
    u128 unit = ((u128)1 << (e < 0 ? -e : 0)) * ten(q > 0 ? q : 0); /* 10^q, scaled */
    u128 d = value / unit, rest = value % unit;
    if (rest * 2 > unit || (rest * 2 == unit && (d & 1))) d++; /* the nearest, half to even: as repr picks */
    u128 above = d * unit * 4, below = value * 4;
    u128 half = ((u128)2 << (e > 0 ? e : 0)) * scale;      /* 4 × 2^(e-1), scaled */
    u128 limit = above < below && m == 1ULL << 52 ? half / 2 : half;
    u128 distance = above > below ? above - below : below - above;
    if (distance > limit && limit < half && (d + 1) * unit * 4 - below <= half) d++, distance = 0; /* see above */
    *digits = (uint64_t)d;
    return distance < limit || (distance == limit && !(m & 1)); /* at the midpoint, strtod's tie goes to even m */
}

/* The fewest significant digits that read back as v, written as Python's repr (and orjson) write them, for
 * 1e-3 <= |v| < 1e34, where the 128-bit integers above cannot overflow (beyond, 0 and the caller's snprintf): glibc's
 * %.17g alone takes ~440 ns a value here, where a product would use Ryu or the like (~30 ns). If p digits read back,
 * so do p + 1 (the nearest p + 1 digits are no farther), hence a binary search; 18 always do (17 do, and e10 may be
 * one too low). */
static int shortest(char *out, double v)
{
    double a = fabs(v);
    if (!(a >= 1e-3 && a < 1e34)) return 0;
    int e2, low = 1, high = 18, n = 0;
    uint64_t m = (uint64_t)ldexp(frexp(a, &e2), 53), digits;
    int e = e2 - 53, e10 = (int)floor((e2 - 1) * 0.30102999566398120); /* 2^(e2-1) <= a: log10(a), or 1 less */
    while (low < high) {
        int middle = (low + high) / 2;
        if (reads_back(m, e, e10 - middle + 1, &digits)) high = middle;
        else low = middle + 1;
    }
    int q = e10 - low + 1, len = 0;
    reads_back(m, e, q, &digits);
    for (; digits % 10 == 0; digits /= 10) q++;
    char text[20];
    for (; digits; digits /= 10) text[19 - len++] = (char)('0' + digits % 10);
    const char *first = text + 20 - len;
    int point = len + q; /* digits before the decimal point */
    if (v < 0) out[n++] = '-';
    if (point > 16) { /* d.ddde+XX, as repr from 1e16 up */
        out[n++] = first[0];
        if (len > 1) out[n++] = '.', memcpy(out + n, first + 1, (size_t)len - 1), n += len - 1;
        n += sprintf(out + n, "e+%02d", point - 1);
    } else if (point <= 0) { /* 0.00ddd */
        memcpy(out + n, "0.", 2), memset(out + n + 2, '0', (size_t)-point), n += 2 - point;
        memcpy(out + n, first, (size_t)len), n += len;
    } else if (q >= 0) { /* ddd000.0 */
        memcpy(out + n, first, (size_t)len), memset(out + n + len, '0', (size_t)q), n += len + q;
        memcpy(out + n, ".0", 2), n += 2;
    } else { /* dd.ddd */
        memcpy(out + n, first, (size_t)point), out[n + point] = '.';
        memcpy(out + n + point + 1, first + point, (size_t)(len - point)), n += len + 1;
    }
    return n;
}

/* v as the pod writes it (Python's shortest repr, from orjson): `shortest`, else the first of %.15g, %.16g, %.17g
 * that reads back as v (%.17g always does). */
static void put_double(struct buffer *b, double v)
{
    reserve(b, 40);
    char *at = b->data + b->len;
    int n = v == 0 ? sprintf(at, signbit(v) ? "-0.0" : "0.0") : shortest(at, v);
    for (int precision = 15; !n && precision <= 17; precision++) {
        n = snprintf(at, 32, "%.*g", precision, v);
        if (precision < 17 && strtod(at, NULL) != v) n = 0;
    }
    b->len += (size_t)n;
}

static void put(struct buffer *b, const char *text)
{
    size_t n = strlen(text);
    reserve(b, n);
    memcpy(b->data + b->len, text, n);
    b->len += n;
}

/* An output tensor's element type and shape (rank <= 2 here), through slots 65, 60-62 and 99. */
static int shape_of(OrtValue *value, int *type, int64_t dims[2], size_t *rank)
{
    OrtShape *info;
    if (!ok(ort.GetTensorTypeAndShape(value, &info))) return 0;
    int good = ok(ort.GetTensorElementType(info, type)) && ok(ort.GetDimensionsCount(info, rank)) && *rank >= 1 &&
               *rank <= 2 && ok(ort.GetDimensions(info, dims, *rank));
    ort.ReleaseTensorTypeAndShapeInfo(info);
    return good && (*type == T_DOUBLE || *type == T_FLOAT);
}

static double element(const void *data, int type, size_t i)
{
    return type == T_DOUBLE ? ((const double *)data)[i] : (double)((const float *)data)[i];
}

/* The model on n parsed rows; its outputs as the pod answers them into `answer`. Returns the HTTP status. */
static int predict(int n)
{
    OrtValue *inputs[MAX_FEEDS] = {0}, *outputs[2] = {0};
    int status = 500, type = 0, guard_type = 0, made = 1;
    uint64_t started = now_ns();
    for (int i = 0; i < n_feeds && made; i++) {
        struct feed *f = &feeds[i];
        int64_t shape[2] = {n, f->width};
        if (f->dtype == D_STRING) { /* copied into the tensor's own strings, NULs and all, as Python's binding does */
            made = ok(ort.CreateTensorAsOrtValue(allocator, shape, 2, T_STRING, &inputs[i]));
            for (int r = 0; r < n && made; r++) {
                char *text;
                made = ok(ort.GetResizedStringTensorElementBuffer(inputs[i], (size_t)r, f->lengths[r], &text));
                if (made && f->lengths[r]) memcpy(text, f->strings[r], f->lengths[r]);
            }
        }
        else if (f->dtype == D_F64) /* the tensor wraps the feed's own buffer: no copy */
            made = ok(ort.CreateTensorWithDataAsOrtValue(cpu, f->f64, sizeof(double) * n * f->width, shape, 2,
                                                         T_DOUBLE, &inputs[i]));
        else
            made = ok(ort.CreateTensorWithDataAsOrtValue(cpu, f->f32, sizeof(float) * n * f->width, shape, 2,
                                                         T_FLOAT, &inputs[i]));
    }
    if (made && ok(ort.Run(session, NULL, input_names, (const OrtValue *const *)inputs, (size_t)n_feeds, output_names,
                           n_outputs, outputs))) {
        uint64_t ran = now_ns();
        stats.run_ns += ran - started;
        int64_t dims[2], guard_dims[2];
        size_t rank, guard_rank;
        void *data, *marks = NULL;
        int good = shape_of(outputs[0], &type, dims, &rank) && ok(ort.GetTensorMutableData(outputs[0], &data));
        /* the guard: one mark per row, nonzero where the registry model's sklearn would raise (factory/guard.py) */
        if (good && n_outputs == 2)
            good = shape_of(outputs[1], &guard_type, guard_dims, &guard_rank) &&
                   ok(ort.GetTensorMutableData(outputs[1], &marks));
        size_t width = rank == 2 ? (size_t)dims[1] : 1, total = (size_t)dims[0] * width;
        /* as_outputs: one value per row (flattened, all of the output), else the pod's 500 */
        if (good && (flatten ? total != (size_t)n : dims[0] != n)) good = 0;
        for (size_t i = 0; good && marks && i < (size_t)guard_dims[0]; i++) good = element(marks, guard_type, i) == 0;
        for (size_t i = 0; good && i < total; i++) good = isfinite(element(data, type, i));
        if (good) {
            answer.len = 0;
            put(&answer, "[");
            for (size_t r = 0, i = 0; r < (flatten ? total : (size_t)n); r++) {
                if (r) put(&answer, ",");
                if (flatten || rank == 1) { put_double(&answer, element(data, type, i++)); continue; }
                put(&answer, "[");
                for (size_t k = 0; k < width; k++, i++) {
                    if (k) put(&answer, ",");
                    put_double(&answer, element(data, type, i));
                }
                put(&answer, "]");
            }
            put(&answer, "]");
            status = 200;
        }
        stats.answer_ns += now_ns() - ran;
    }
    for (int i = 0; i < n_feeds; i++) if (inputs[i]) ort.ReleaseValue(inputs[i]);
    for (size_t i = 0; i < n_outputs; i++) if (outputs[i]) ort.ReleaseValue(outputs[i]);
    return status;
}

/* ---- HTTP/1.1 over epoll, one thread. ---- */
enum { MAX_FDS = 4096, MAX_HEAD = 8192, MAX_BODY = 1 << 20 };
struct conn {
    char *in;
    size_t len, cap;
    char *pending; /* the unwritten rest of an answer: no more requests are read until it is out */
    size_t pending_len, pending_off;
    int closing;   /* close once the pending answer is out */
};
static struct conn *conns[MAX_FDS];
static int epoll_fd;
static volatile sig_atomic_t stopping;

static void drop(int fd)
{
    struct conn *c = conns[fd];
    if (c) free(c->in), free(c->pending), free(c);
    conns[fd] = NULL;
    close(fd);
}

/* Head and body in one writev; what the socket does not take now waits for EPOLLOUT. */
static void respond(int fd, int status, const char *body, size_t len, int closing)
{
    struct conn *c = conns[fd];
    const char *reason = status == 200 ? "OK" : status == 400 ? "Bad Request" : status == 404 ? "Not Found" :
                         status == 413 ? "Payload Too Large" : status == 501 ? "Not Implemented" : "Server Error";
    char head[256];
    int head_len = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                            "content-length: %zu\r\n%s\r\n", status, reason, len,
                            closing ? "connection: close\r\n" : "");
    struct iovec parts[2] = {{head, (size_t)head_len}, {(void *)body, len}};
    ssize_t sent = writev(fd, parts, 2);
    size_t total = (size_t)head_len + len, done = sent > 0 ? (size_t)sent : 0;
    if (sent < 0 && errno != EAGAIN) { c->closing = 1, c->pending_len = 0; return; }
    c->closing = closing;
    if (done == total) return;
    c->pending = malloc(total), c->pending_len = total, c->pending_off = done; /* head + body; `done` of it sent */
    memcpy(c->pending, head, (size_t)head_len), memcpy(c->pending + head_len, body, len);
    struct epoll_event event = {.events = EPOLLOUT, .data.fd = fd};
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &event);
}

static void refuse(int fd, int status, const char *code, int closing)
{
    char body[128];
    int len = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\"}}", code);
    respond(fd, status, body, (size_t)len, closing);
}

/* One request whose head and body are in: any GET answers "ok"; POST /predict runs the model. */
static void serve(int fd, const char *method, const char *target, char *body, size_t len, int closing)
{
    size_t path = strcspn(target, "?");
    if (!strcmp(method, "GET")) { respond(fd, 200, "\"ok\"", 4, closing); return; }
    if (strcmp(method, "POST") || path != 8 || memcmp(target, "/predict", 8)) {
        refuse(fd, 404, "not_found", closing);
        return;
    }
    uint64_t started = now_ns();
    int n = parse(body, body + len);
    stats.parse_ns += now_ns() - started, stats.requests++;
    if (n < 0) { refuse(fd, 400, "bad_request", closing); return; }
    int status = predict(n);
    if (status == 200) respond(fd, 200, answer.data, answer.len, closing);
    else refuse(fd, status, "model_error", closing);
}

/* Every complete request in the connection's buffer, in order (pipelining), until an answer has to wait. */
static void handle_requests(int fd)
{
    struct conn *c = conns[fd];
    size_t at = 0;
    while (!c->pending && !c->closing) {
        char *head = c->in + at, *end_of_head = memmem(head, c->len - at, "\r\n\r\n", 4);
        if (!end_of_head) {
            if (c->len - at > MAX_HEAD) refuse(fd, 400, "head_too_large", 1);
            break;
        }
        *end_of_head = 0; /* the head as a C string (it ends at this CRLF) */
        char method[16], target[2048], version[16];
        int keep_alive = 0, closing = 0, bad = sscanf(head, "%15s %2047s HTTP/%15s", method, target, version) != 3;
        long long length = 0;
        for (char *line = strstr(head, "\r\n"); !bad && line; line = strstr(line, "\r\n")) {
            line += 2;
            char *end_of_line = strstr(line, "\r\n"), *colon, *value;
            colon = memchr(line, ':', end_of_line ? (size_t)(end_of_line - line) : strlen(line));
            if (!colon) { bad = 1; break; }
            value = colon + 1;
            while (*value == ' ' || *value == '\t') value++;
            size_t name_len = (size_t)(colon - line);
            if (name_len == 14 && !strncasecmp(line, "content-length", 14)) {
                char *stop;
                length = strtoll(value, &stop, 10);
                bad = stop == value || (*stop != '\r' && *stop != 0 && *stop != ' ') || length < 0;
            } else if (name_len == 17 && !strncasecmp(line, "transfer-encoding", 17)) bad = 2; /* chunked: not here */
            else if (name_len == 10 && !strncasecmp(line, "connection", 10)) {
                closing |= strncasecmp(value, "close", 5) == 0;
                keep_alive |= strncasecmp(value, "keep-alive", 10) == 0;
            }
        }
        if (!bad && !strcmp(version, "1.0") && !keep_alive) closing = 1;
        size_t head_len = (size_t)(end_of_head + 4 - head);
        if (bad || length > MAX_BODY) {
            refuse(fd, bad == 2 ? 501 : bad ? 400 : 413, bad == 2 ? "chunked" : bad ? "bad_head" : "body_too_large", 1);
            break;
        }
        if (c->len - at < head_len + (size_t)length) { *end_of_head = '\r'; break; } /* the body is still coming */
        char *body = head + head_len, saved = body[length];
        body[length] = 0; /* strtod's stop; the buffer always keeps a byte past its data */
        serve(fd, method, target, body, (size_t)length, closing);
        body[length] = saved;
        at += head_len + (size_t)length;
    }
    memmove(c->in, c->in + at, c->len - at);
    c->len -= at;
}

static void on_readable(int fd)
{
    struct conn *c = conns[fd];
    if (c->len + 1 + 16384 > c->cap) {
        if (c->cap >= MAX_HEAD + MAX_BODY + 16384 + 1) { drop(fd); return; } /* cannot happen after the checks */
        c->cap = c->cap * 2 > c->len + 1 + 16384 ? c->cap * 2 : c->len + 1 + 16384;
        if (!(c->in = realloc(c->in, c->cap))) { perror("realloc"); exit(1); }
    }
    ssize_t n = read(fd, c->in + c->len, c->cap - c->len - 1); /* one read: epoll tells again if more is there */
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { drop(fd); return; }
    if (n < 0) return;
    c->len += (size_t)n;
    handle_requests(fd);
    if (conns[fd] && c->closing && !c->pending) drop(fd);
}

static void on_writable(int fd)
{
    struct conn *c = conns[fd];
    ssize_t n = write(fd, c->pending + c->pending_off, c->pending_len - c->pending_off);
    if (n < 0 && errno != EAGAIN) { drop(fd); return; }
    if (n > 0) c->pending_off += (size_t)n;
    if (c->pending_off < c->pending_len) return;
    free(c->pending), c->pending = NULL;
    if (c->closing) { drop(fd); return; }
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &event);
    handle_requests(fd); /* requests that came in meanwhile */
    if (conns[fd] && c->closing && !c->pending) drop(fd);
}

static void on_signal(int signal) { (void)signal; stopping = 1; }

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: %s PORT CONFIG\n", argv[0]); return 2; }
    read_config(argv[2]);
    load_ort(library);
    open_session();
    struct sigaction action = {.sa_handler = on_signal}; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 1024)) {
        perror("bind");
        return 1;
    }
    epoll_fd = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listener}, events[64];
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &event);
    fprintf(stderr, "serving on 127.0.0.1:%s\n", argv[1]);
    while (!stopping) {
        int ready = epoll_wait(epoll_fd, events, 64, -1);
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int client;
                while ((client = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (client >= MAX_FDS) { close(client); continue; }
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as uvicorn sets it */
                    conns[client] = calloc(1, sizeof(struct conn));
                    struct epoll_event added = {.events = EPOLLIN, .data.fd = client};
                    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, client, &added);
                }
            } else if (conns[fd] && events[i].events & (EPOLLERR | EPOLLHUP) && !(events[i].events & EPOLLIN)) drop(fd);
            else if (conns[fd] && conns[fd]->pending) on_writable(fd);
            else if (conns[fd]) on_readable(fd);
        }
    }
    double requests = stats.requests ? (double)stats.requests : 1;
    fprintf(stderr, "native_bound stats: requests %llu parse_us %.2f run_us %.2f answer_us %.2f\n",
            (unsigned long long)stats.requests, stats.parse_ns / requests / 1e3, stats.run_ns / requests / 1e3,
            stats.answer_ns / requests / 1e3);
    return 0;
}
