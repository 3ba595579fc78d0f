/* askbuild fixture: the cdx user/kernel interface (dpa_app includes it via -I cdx). */
#ifndef FIXTURE_CDX_IOCTL_H
#define FIXTURE_CDX_IOCTL_H
#define CDX_FIXTURE_ABI 3
#endif
