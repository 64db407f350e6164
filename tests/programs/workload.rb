#!/usr/bin/env ruby
# Allocation-heavy Ruby workload for the LD_PRELOAD comparison in
# scripts/preload-tests.sh: hashes, strings, arrays, symbols-to-string
# conversions and GC churn.  Output is deterministic (seeded PRNG, sorted
# keys) and must be identical with and without the preload.
require 'digest'

rng = Random.new(424242)
digest = Digest::SHA256.new

feed = lambda do |label, text|
  digest << label << text
  puts "#{label}: #{Digest::SHA256.hexdigest(text)[0, 16]}"
end

# 1. a big hash of small objects, partly deleted
h = {}
80_000.times do |i|
  h["key#{i}-#{rng.rand(1 << 30)}"] = [i, 'ab' * (i % 9), { n: i % 31 }]
end
h.delete_if { |_, v| v[0] % 3 == 0 }
summary = h.keys.sort.first(3000).map { |k| "#{k}=#{h[k][0]}/#{h[k][1].size}/#{h[k][2][:n]}" }
feed.call('hash', ([h.size] + summary).join(','))

# 2. strings: building, gsub, split, scan, formatting
words = Array.new(40_000) { (1 + rng.rand(10)).times.map { (97 + rng.rand(26)).chr }.join }
text = words.join(' ')
freq = Hash.new(0)
text.scan(/\b[a-z]{3,5}\b/) { |w| freq[w] += 1 }
top = freq.sort_by { |w, c| [-c, w] }.first(50).map { |w, c| "#{w}:#{c}" }
rewritten = text.gsub(/([aeiou])([^aeiou ]+)/) { "#{$2.upcase}#{$1}" }
pieces = rewritten.split(/[aeiou]+/)
feed.call('strings', [freq.size, top, rewritten.size, pieces.size].flatten.join(','))

# 3. arrays: sort, slices, nested structures, flatten
recs = []
50_000.times do |i|
  recs << [rng.rand(1000), "r#{i}", Array.new(rng.rand(8)) { rng.rand(100) }]
  recs.delete_at(rng.rand(recs.size)) if i % 4 == 0
end
sorted = recs.sort_by { |a, b, _| [a, b] }
flat = sorted.first(2000).flatten
feed.call('arrays', [sorted.size, flat.size, flat.sum { |x| x.is_a?(Integer) ? x : x.size }].join(','))

# 4. churn: many short-lived strings and arrays, forcing GC
live = []
total = 0
100_000.times do |i|
  size = 1 << rng.rand(13)
  live << (i.odd? ? 'y' * size : Array.new(size / 8 + 1, i))
  total += live.delete_at(rng.rand(live.size)).size if live.size > 400
end
GC.start
feed.call('churn', total.to_s)

puts "digest: #{digest.hexdigest}"
