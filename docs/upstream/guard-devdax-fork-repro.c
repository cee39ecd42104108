// Reproducer: MADV_GUARD_INSTALL on a device-dax mapping, then fork, copies a refcounted
// 1 GiB PUD with copy_huge_pud() (no reference, rmap or RSS for the child); the child's exit
// reports "BUG: Bad rss-counter state ... type:MM_FILEPAGES val:-262144".
//
// Needs a device-dax instance with 1 GiB alignment of at least 2 GiB, e.g.
//   ndctl create-namespace -m devdax -a 1G -s 4G
// Build: cc -O2 -static -o guard-devdax-fork-repro guard-devdax-fork-repro.c
// Run:   ./guard-devdax-fork-repro /dev/dax0.0 ; dmesg | tail
// (The last argument may also be given as INDEX=/dev/daxX.Y, the form foliosim's QEMU
// harness passes.)
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

#define GIB (1UL << 30)

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[argc - 1] : "/dev/dax0.0";
	const char *eq = strchr(path, '=');
	if (eq)
		path = eq + 1;

	int fd = open(path, O_RDWR);
	if (fd < 0) {
		fprintf(stderr, "open %s: %s\n", path, strerror(errno));
		return 1;
	}
	/* device-dax aligns the mapping to the device's 1 GiB alignment */
	char *p = mmap(NULL, 2 * GIB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr, "mmap: %s\n", strerror(errno));
		return 1;
	}
	/* sets VM_MAYBE_GUARD on the VMA, so fork copies its page tables */
	if (madvise(p + GIB, GIB, MADV_GUARD_INSTALL)) {
		fprintf(stderr, "madvise(MADV_GUARD_INSTALL): %s\n", strerror(errno));
		return 1;
	}
	/* a read fault maps the first GiB with one PUD (refcounted since the FS DAX series) */
	(void)*(volatile char *)p;

	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0)
		_exit(0); /* the child's exit zaps the PUD copied by copy_huge_pud() */
	waitpid(pid, NULL, 0);
	printf("child exited; look for \"Bad rss-counter\" in dmesg\n");
	munmap(p, 2 * GIB);
	close(fd);
	return 0;
}
