/* SHA-256 against the FIPS 180-2 vectors, lengths around the padding boundaries, streaming in
 * uneven pieces, and whole files. */
#include <unistd.h>

#include "svh_internal.h"
#include "test_util.h"

static void hex_of(const void *data, size_t len, char hex[65]) {
    svh_sha256 s;
    uint8_t d[32];
    svh_sha256_init(&s);
    svh_sha256_update(&s, data, len);
    svh_sha256_final(&s, d);
    svh_sha256_hex(d, hex);
}

static void check_vector(const char *input, size_t len, const char *want) {
    char hex[65];
    hex_of(input, len, hex);
    CHECK_MSG(strcmp(hex, want) == 0, "sha256 of %zu bytes: %s, expected %s", len, hex, want);
}

int main(void) {
    check_vector("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_vector("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *v448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    check_vector(v448, strlen(v448), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *v896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopq"
                       "rstnopqrstu";
    check_vector(v896, strlen(v896), "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    check_vector("hello\n", 6, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");

    /* lengths around the 55/56/64-byte padding boundaries (values from Python's hashlib) */
    static const struct {
        size_t n;
        const char *hex;
    } as[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
        {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
        {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
    };
    char a[128];
    memset(a, 'a', sizeof a);
    for (size_t k = 0; k < sizeof as / sizeof *as; ++k) check_vector(a, as[k].n, as[k].hex);

    /* one million 'a', fed in uneven pieces */
    const char *million = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    char *big = malloc(1000000);
    memset(big, 'a', 1000000);
    check_vector(big, 1000000, million);
    svh_sha256 s;
    uint8_t d[32];
    char hex[65];
    svh_sha256_init(&s);
    size_t pos = 0, piece = 1;
    while (pos < 1000000) {
        size_t n = piece < 1000000 - pos ? piece : 1000000 - pos;
        svh_sha256_update(&s, big + pos, n);
        pos += n;
        piece = (piece * 7 + 3) % 191;
    }
    svh_sha256_final(&s, d);
    svh_sha256_hex(d, hex);
    CHECK_MSG(strcmp(hex, million) == 0, "streamed: %s", hex);

    /* streaming equals one-shot for every length up to 300 and every split point of some */
    uint8_t pattern[300];
    for (size_t k = 0; k < sizeof pattern; ++k) pattern[k] = (uint8_t)(k * 31 + 7);
    for (size_t len = 0; len <= sizeof pattern; ++len) {
        char one[65], two[65];
        hex_of(pattern, len, one);
        size_t split = (len * 13) % (len + 1);
        svh_sha256_init(&s);
        svh_sha256_update(&s, pattern, split);
        svh_sha256_update(&s, pattern + split, len - split);
        svh_sha256_final(&s, d);
        svh_sha256_hex(d, two);
        CHECK_MSG(strcmp(one, two) == 0, "length %zu split at %zu", len, split);
    }

    /* a file: the million 'a' */
    char path[] = "/tmp/svh_sha256_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK(write(fd, big, 1000000) == 1000000);
        close(fd);
        uint64_t size = 0;
        CHECK(svh_sha256_file(path, hex, &size) == 0);
        CHECK(size == 1000000);
        CHECK(strcmp(hex, million) == 0);
        unlink(path);
    }
    CHECK(svh_sha256_file("/nonexistent/file", hex, &(uint64_t){0}) == -1);
    free(big);
    return t_report("test_sha256");
}
