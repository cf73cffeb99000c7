// Function-level first-use tracer for training cellet's code layout (bench/layout/train).
//
// LD_PRELOADed into a process, it does nothing unless /proc/self/exe is CELLET_TRACE_EXE.
// Then it reads CELLET_TRACE_FUNCTIONS (one decimal link-time address per line: the entry
// of every function of that binary, from its symbol table), makes the binary's code
// writable (a private copy-on-write mapping: the file is never written), and puts an int3
// on each entry. The first call of a function traps once: the handler appends the
// function's index to CELLET_TRACE_OUT.<pid>, puts the original byte back and resumes at the
// entry. So the output is every function the process executed, in first-use order, with
// no sampling gaps and no fault-around, which page-level traces include.
//
// Training only: the code stays writable, and an int3 that is not ours stops the process.
#define _GNU_SOURCE
#include <fcntl.h>
#include <link.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

static uintptr_t *entries;   // run-time addresses, ascending
static uint8_t *original;    // the byte each int3 replaced
static size_t count;
static int out_fd = -1;

static long find(uintptr_t address) {
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (entries[mid] < address) lo = mid + 1;
        else hi = mid;
    }
    return (lo < count && entries[lo] == address) ? (long)lo : -1;
}

static void on_trap(int sig, siginfo_t *info, void *context) {
    (void)info;
    ucontext_t *uc = context;
    uintptr_t address = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP] - 1;
    long index = find(address);
    if (index < 0) {
        // Not one of ours: behave as if no handler were installed.
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    volatile uint8_t *code = (volatile uint8_t *)address;
    if (*code == 0xCC) {
        // First thread here records it; one that raced on the same entry finds the byte
        // back already and only resumes.
        *code = original[index];
        uint32_t record = (uint32_t)index;
        if (write(out_fd, &record, sizeof record) != sizeof record) { /* nothing to do */ }
    }
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)address;
}

struct code_range { uintptr_t base, lo, hi; };

// The executable's load address and its executable segment (the first object is the
// executable itself).
static int main_object_code(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct code_range *code = data;
    code->base = info->dlpi_addr;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            code->lo = info->dlpi_addr + ph->p_vaddr;
            code->hi = code->lo + ph->p_memsz;
        }
    }
    return 1;
}

__attribute__((constructor)) static void start_tracing(void) {
    const char *want = getenv("CELLET_TRACE_EXE");
    const char *list = getenv("CELLET_TRACE_FUNCTIONS");
    const char *out = getenv("CELLET_TRACE_OUT");
    if (!want || !list || !out) return;
    char exe[PATH_MAX], wanted[PATH_MAX];
    if (!realpath("/proc/self/exe", exe) || !realpath(want, wanted) || strcmp(exe, wanted) != 0) return;

    struct code_range code = {0, 0, 0};
    dl_iterate_phdr(main_object_code, &code);

    FILE *f = fopen(list, "r");
    if (!f) { perror("cellet trace: function list"); _exit(98); }
    size_t capacity = 1 << 18;
    entries = malloc(capacity * sizeof *entries);
    unsigned long long value;
    while (fscanf(f, "%llu", &value) == 1) {
        if (count == capacity) entries = realloc(entries, (capacity *= 2) * sizeof *entries);
        uintptr_t entry = code.base + (uintptr_t)value;
        if (entry < code.lo || entry >= code.hi) {
            fprintf(stderr, "cellet trace: %s names an entry outside the code of %s: "
                    "the list is not of this binary (rebuilt since?)\n", list, exe);
            _exit(98);
        }
        entries[count++] = entry;
    }
    fclose(f);
    original = malloc(count);

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s.%d", out, (int)getpid());
    out_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (out_fd < 0) { perror("cellet trace: output"); _exit(98); }

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_trap;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGTRAP, &action, NULL);

    long page = sysconf(_SC_PAGESIZE);
    uintptr_t lo = entries[0] & ~(uintptr_t)(page - 1);
    uintptr_t hi = (entries[count - 1] + page) & ~(uintptr_t)(page - 1);
    if (mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE | PROT_EXEC) != 0) {
        perror("cellet trace: mprotect");
        _exit(98);
    }
    for (size_t i = 0; i < count; i++) {
        original[i] = *(uint8_t *)entries[i];
        *(uint8_t *)entries[i] = 0xCC;
    }
    // Children (the agents, runc) must not inherit the tracer.
    unsetenv("LD_PRELOAD");
}
