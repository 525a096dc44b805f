/* Test scaffolding for deploy/checks/40-platforms.sh, never shipped.
 *
 * Rust's std on Windows imports ProcessPrng from bcryptprimitives.dll. Real Windows (10 and later) has that DLL;
 * Wine 8 (Debian 12) does not, so the exe fails to load there. This one-function stand-in, placed beside the exe
 * only under Wine, answers with RtlGenRandom (advapi32's SystemFunction036), which Wine does have. */
#include <windows.h>
#define SystemFunction036 NTAPI SystemFunction036
#include <ntsecapi.h>
#undef SystemFunction036

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    return RtlGenRandom(data, (ULONG)len);
}
