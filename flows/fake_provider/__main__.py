from flows.fake_provider import main

main()
