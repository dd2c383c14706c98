/* A client whose aggregator is missing, unreachable or silent gives up after its connect timeout
 * instead of hanging; a missing environment fails at once with a message that says what to do. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "svh_internal.h"
#include "test_util.h"

/* A TCP port nobody listens on (bound, then released). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0) abort();
    close(fd);
    return ntohs(a.sin_port);
}

static void expect_timeout(const char *endpoint, int timeout_ms) {
    int64_t t0 = svh_monotonic_ms();
    svh_client *h = svh_connect(endpoint, "secret", -1, timeout_ms);
    int64_t took = svh_monotonic_ms() - t0;
    CHECK_MSG(h == NULL, "%s: connected?", endpoint);
    if (h) svh_close(h, 100);
    CHECK_MSG(svh_last_error_code() == SVH_ETIMEOUT, "%s: code %d (%s)", endpoint, svh_last_error_code(),
              svh_last_error());
    CHECK_MSG(strstr(svh_last_error(), "no answer from the aggregator") != NULL, "%s: %s", endpoint,
              svh_last_error());
    CHECK_MSG(took >= timeout_ms - 5 && took < timeout_ms + 2000, "%s: gave up after %lld ms (timeout %d)", endpoint,
              (long long)took, timeout_ms);
    printf("  %s: gave up after %lld ms: %s\n", endpoint, (long long)took, svh_last_error());
}

int main(void) {
    const char *vars[] = {"SIMVUE_HPC_ENDPOINT", "SIMVUE_HPC_SECRET", "SIMVUE_HPC_OWNER", "SIMVUE_HPC_CONNECT_TIMEOUT",
                          "SIMVUE_HPC_BATCH_POINTS", "SIMVUE_HPC_OVERFLOW", "SIMVUE_HPC_FLUSH_INTERVAL"};
    for (size_t k = 0; k < sizeof vars / sizeof *vars; ++k) unsetenv(vars[k]);

    /* no run in the environment: at once, saying what is missing */
    int64_t t0 = svh_monotonic_ms();
    CHECK(svh_connect_env(-1) == NULL);
    CHECK(svh_last_error_code() == SVH_EINVAL);
    CHECK(strstr(svh_last_error(), "SIMVUE_HPC_ENDPOINT") != NULL);
    setenv("SIMVUE_HPC_ENDPOINT", "tcp://127.0.0.1:1", 1);
    CHECK(svh_connect_env(-1) == NULL);
    CHECK(strstr(svh_last_error(), "SIMVUE_HPC_SECRET") != NULL);
    CHECK(svh_monotonic_ms() - t0 < 1000);

    /* malformed settings */
    setenv("SIMVUE_HPC_SECRET", "s", 1);
    setenv("SIMVUE_HPC_BATCH_POINTS", "many", 1);
    CHECK(svh_connect_env(100) == NULL);
    CHECK(strstr(svh_last_error(), "SIMVUE_HPC_BATCH_POINTS") != NULL);
    unsetenv("SIMVUE_HPC_BATCH_POINTS");
    setenv("SIMVUE_HPC_OVERFLOW", "wait", 1);
    CHECK(svh_connect_env(100) == NULL);
    CHECK(strstr(svh_last_error(), "SIMVUE_HPC_OVERFLOW") != NULL);
    unsetenv("SIMVUE_HPC_OVERFLOW");
    CHECK(svh_connect("not an endpoint", "s", 0, 100) == NULL);
    CHECK(svh_last_error_code() == SVH_EIO && strstr(svh_last_error(), "cannot connect") != NULL);
    CHECK(svh_connect(NULL, "s", 0, 100) == NULL && svh_last_error_code() == SVH_EINVAL);
    CHECK(svh_connect("tcp://127.0.0.1:1", "s", -2, 100) == NULL && svh_last_error_code() == SVH_EINVAL);

    /* nobody at the endpoint: connection refused (ZeroMQ retries), no socket file. (A host name that
     * does not resolve is not tried: libzmq resolves in its I/O thread, and the context's teardown
     * waits for the resolver, whose timeout on a machine without DNS is not ours to bound.) */
    char endpoint[128];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", free_port());
    expect_timeout(endpoint, 300);
    snprintf(endpoint, sizeof endpoint, "ipc:///tmp/svh-missing-%d/aggregator.sock", (int)getpid());
    expect_timeout(endpoint, 300);

    /* an aggregator that accepts the connection but never answers */
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    CHECK(zmq_bind(router, "tcp://127.0.0.1:*") == 0);
    size_t len = sizeof endpoint;
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, endpoint, &len);
    expect_timeout(endpoint, 400);

    /* through the environment, with the timeout from SIMVUE_HPC_CONNECT_TIMEOUT */
    setenv("SIMVUE_HPC_ENDPOINT", endpoint, 1);
    setenv("SIMVUE_HPC_CONNECT_TIMEOUT", "0.25", 1);
    t0 = svh_monotonic_ms();
    CHECK(svh_connect_env(-1) == NULL);
    int64_t took = svh_monotonic_ms() - t0;
    CHECK(svh_last_error_code() == SVH_ETIMEOUT);
    CHECK_MSG(took >= 245 && took < 2250, "took %lld ms", (long long)took);
    zmq_close(router);
    zmq_ctx_term(ctx);
    return t_report("test_handshake_timeout");
}
