/* LD_PRELOAD shim for benchmarking Janus on loopback (bench/janus.py).
 *
 * Janus (src/ice.c) and libnice skip interfaces flagged IFF_LOOPBACK when they
 * gather host candidates, so stock Janus never offers 127.0.0.1. Clearing the flag
 * in getifaddrs()'s answer, together with ice_enforce_list = "127.0.0.1", makes it
 * offer exactly that one candidate. Nothing else is changed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>

int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **) = 0;
    if (!real)
        real = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    int rc = real(ifap);
    if (rc == 0)
        for (struct ifaddrs *i = *ifap; i; i = i->ifa_next)
            i->ifa_flags &= ~IFF_LOOPBACK;
    return rc;
}
