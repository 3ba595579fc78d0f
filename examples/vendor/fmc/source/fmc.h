/* askbuild fixture: fmc library interface (CRLF like NXP fmc). */
#ifndef FIXTURE_FMC_H
#define FIXTURE_FMC_H
#ifdef __cplusplus
extern "C" {
#endif
int fmc_fixture_compile(const char *pdl_path, char *out, int outlen);
#ifdef __cplusplus
}
#endif
#endif
