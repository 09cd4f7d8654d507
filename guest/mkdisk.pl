#!/usr/bin/perl
# Writes the NVMe disk image: $ARGV[1] MiB where every 512-byte block starts with
# "dmakit LBA <n>\n" and the rest of the block is the byte (n & 0xff) repeated, so a test can
# check any block it reads without knowing anything else.
use strict; use warnings;
my ($path, $mib) = @ARGV;
open(my $f, '>:raw', $path) or die "mkdisk: $path: $!";
for my $n (0 .. $mib * 2048 - 1) {
    my $head = "dmakit LBA $n\n";
    print $f $head, chr($n & 0xff) x (512 - length $head);
}
close $f or die "mkdisk: $path: $!";
